//! What stage2 says outside the menu: an error line, and the pause before a guest starts.

use crate::{console, println};

/// An error in the error colour, on the screen and COM1.
pub fn show_error(message: &str) {
    console::set_attr(console::ATTR_ERROR);
    println!("\nvboot: {}", message);
    console::set_attr(console::ATTR_NORMAL);
}

/// `pause`: say so and wait for a key before the guest starts.
pub fn pause_if_asked(pause: bool) {
    if pause {
        println!("Paused before starting the guest. Press any key to boot.");
        crate::wait_key();
    }
}

