//! The entry editor behind `e`, as GRUB has it: a line editor over the lines of a menu entry's
//! body, for this boot only. Pure state: keys in ([`Event`]), an [`EditOutcome`] out, and rows
//! of text with a cursor position to draw. Reading the edited lines as an entry is the caller's
//! ([`crate::config::Entry::edited`]); nothing here knows grub.cfg.
//!
//! Keys: arrows, Home/End move; a character is inserted at the cursor; Backspace and Delete
//! erase, joining lines at a line's start or end; Enter splits the line at the cursor; Ctrl-X or
//! F10 boots the lines; Esc discards them.
//!
//! A long line is shown over several rows, each cut one column short of the width with a `\`
//! in the last column, as GRUB's editor shows it; the view turns a page at a time so the cursor
//! stays on screen.

use alloc::string::String;
use alloc::vec::Vec;

use super::Event;

/// Bounds on what can be typed: a stuck key or a long paste over serial stops here instead of
/// growing the firmware's heap without end. Real entries are a few lines of under 200 characters.
pub const MAX_LINES: usize = 256;
pub const MAX_LINE_CHARS: usize = 2048;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Editor {
    lines: Vec<Vec<char>>,
    row: usize,
    /// Cursor column in characters, `0..=len` of its line.
    col: usize,
}

/// What a key did to the editor.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EditOutcome {
    /// Nothing changed (a key with no meaning here, or a move against an edge).
    None,
    Redraw,
    /// Ctrl-X or F10: boot these lines.
    Boot(Vec<String>),
    /// Esc: back to the menu, the edit thrown away.
    Discard,
}

/// What to draw for the editor's body: `rows` of at most `width` characters and where the
/// cursor is among them (row, column).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EditorView {
    pub rows: Vec<String>,
    pub cursor: (usize, usize),
    pub more_above: bool,
    pub more_below: bool,
}

impl Editor {
    /// The cursor starts at the start of the first line. An empty body still has one line to
    /// type into.
    pub fn new(lines: &[String]) -> Editor {
        let mut lines: Vec<Vec<char>> = lines.iter().take(MAX_LINES).map(|l| l.chars().take(MAX_LINE_CHARS).collect()).collect();
        if lines.is_empty() {
            lines.push(Vec::new());
        }
        Editor { lines, row: 0, col: 0 }
    }

    pub fn lines(&self) -> Vec<String> {
        self.lines.iter().map(|l| l.iter().collect()).collect()
    }

    /// (line, column) of the cursor, both from 0.
    pub fn cursor(&self) -> (usize, usize) {
        (self.row, self.col)
    }

    fn line_len(&self) -> usize {
        self.lines[self.row].len()
    }

    /// Move the cursor; `Redraw` only when it moved.
    fn move_to(&mut self, row: usize, col: usize) -> EditOutcome {
        if (row, col) == (self.row, self.col) {
            return EditOutcome::None;
        }
        self.row = row;
        self.col = col;
        EditOutcome::Redraw
    }

    pub fn handle(&mut self, event: Event) -> EditOutcome {
        let (row, col, len) = (self.row, self.col, self.line_len());
        let last_row = self.lines.len() - 1;
        match event {
            Event::Char(c) => {
                if len >= MAX_LINE_CHARS {
                    return EditOutcome::None;
                }
                self.lines[row].insert(col, c);
                self.col += 1;
                EditOutcome::Redraw
            }
            Event::Enter => {
                if self.lines.len() >= MAX_LINES {
                    return EditOutcome::None;
                }
                let rest = self.lines[row].split_off(col);
                self.lines.insert(row + 1, rest);
                self.row += 1;
                self.col = 0;
                EditOutcome::Redraw
            }
            Event::Backspace if col > 0 => {
                self.lines[row].remove(col - 1);
                self.col -= 1;
                EditOutcome::Redraw
            }
            Event::Backspace if row > 0 => {
                let tail = self.lines.remove(row);
                self.row -= 1;
                self.col = self.line_len();
                self.join_onto_cursor_line(tail)
            }
            Event::Delete if col < len => {
                self.lines[row].remove(col);
                EditOutcome::Redraw
            }
            Event::Delete if row < last_row => {
                let tail = self.lines.remove(row + 1);
                self.join_onto_cursor_line(tail)
            }
            Event::Backspace | Event::Delete => EditOutcome::None,
            // Left at a line's start and Right at its end go on to the next line, as in GRUB.
            Event::Left if col > 0 => self.move_to(row, col - 1),
            Event::Left if row > 0 => self.move_to(row - 1, self.lines[row - 1].len()),
            Event::Right if col < len => self.move_to(row, col + 1),
            Event::Right if row < last_row => self.move_to(row + 1, 0),
            Event::Up if row > 0 => self.move_to(row - 1, col.min(self.lines[row - 1].len())),
            Event::Down if row < last_row => self.move_to(row + 1, col.min(self.lines[row + 1].len())),
            Event::Home => self.move_to(row, 0),
            Event::End => self.move_to(row, len),
            Event::Control('x') | Event::Function(10) => EditOutcome::Boot(self.lines()),
            Event::Escape => EditOutcome::Discard,
            _ => EditOutcome::None,
        }
    }

    /// Backspace at a line's start or Delete at its end: `tail` goes onto the cursor's line,
    /// up to the line bound (a join that would pass it keeps the rest as a line of its own).
    fn join_onto_cursor_line(&mut self, mut tail: Vec<char>) -> EditOutcome {
        let room = MAX_LINE_CHARS - self.line_len();
        if tail.len() > room {
            let rest = tail.split_off(room);
            self.lines.insert(self.row + 1, rest);
        }
        self.lines[self.row].extend(tail);
        EditOutcome::Redraw
    }

    /// The body as rows of `width` characters, `height` rows of it: the page holding the
    /// cursor.
    pub fn view(&self, width: usize, height: usize) -> EditorView {
        // One column stays for the `\` that marks a line going on in the next row.
        let chunk = width.saturating_sub(1).max(1);
        let mut rows: Vec<String> = Vec::new();
        let mut cursor = (0, 0);
        for (n, line) in self.lines.iter().enumerate() {
            // A line of `len` characters has `len + 1` cursor positions; a row per `chunk` of
            // them, so a cursor after the last character always has a row to stand in.
            let row_count = line.len() / chunk + 1;
            if n == self.row {
                cursor = (rows.len() + self.col / chunk, self.col % chunk);
            }
            for r in 0..row_count {
                let part = line.get(r * chunk..((r + 1) * chunk).min(line.len())).unwrap_or(&[]);
                let mut text: String = part.iter().map(|&c| if c.is_control() { ' ' } else { c }).collect();
                if r + 1 < row_count && width > 1 {
                    text.push('\\');
                }
                rows.push(text);
            }
        }
        if height == 0 {
            return EditorView { rows: Vec::new(), cursor: (0, 0), more_above: false, more_below: !rows.is_empty() };
        }
        let top = cursor.0 / height * height;
        let more_below = rows.len() > top + height;
        let rows: Vec<String> = rows.into_iter().skip(top).take(height).collect();
        EditorView { rows, cursor: (cursor.0 - top, cursor.1.min(width.saturating_sub(1))), more_above: top > 0, more_below }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::string::ToString;

    fn lines(ls: &[&str]) -> Vec<String> {
        ls.iter().map(|l| l.to_string()).collect()
    }

    fn typed(editor: &mut Editor, text: &str) {
        for c in text.chars() {
            assert_eq!(editor.handle(Event::Char(c)), EditOutcome::Redraw);
        }
    }

    fn keys(editor: &mut Editor, events: &[Event]) -> Vec<EditOutcome> {
        events.iter().map(|e| editor.handle(*e)).collect()
    }

    #[test]
    fn end_then_typing_appends_to_the_line() {
        let mut e = Editor::new(&lines(&["insmod ntfs", "vboot harddisk=/xp.vhd"]));
        assert_eq!(e.cursor(), (0, 0));
        keys(&mut e, &[Event::Down, Event::End]);
        typed(&mut e, " pause");
        assert_eq!(e.lines(), lines(&["insmod ntfs", "vboot harddisk=/xp.vhd pause"]));
        assert_eq!(e.handle(Event::Control('x')), EditOutcome::Boot(lines(&["insmod ntfs", "vboot harddisk=/xp.vhd pause"])));
        assert_eq!(e.handle(Event::Function(10)), EditOutcome::Boot(e.lines()));
        assert_eq!(e.handle(Event::Escape), EditOutcome::Discard);
    }

    #[test]
    fn enter_splits_and_backspace_joins() {
        let mut e = Editor::new(&lines(&["vboot harddisk=/a.img pause"]));
        keys(&mut e, &[Event::End, Event::Left, Event::Left, Event::Left, Event::Left, Event::Left, Event::Left]);
        assert_eq!(e.cursor(), (0, 21));
        e.handle(Event::Enter);
        assert_eq!(e.lines(), lines(&["vboot harddisk=/a.img", " pause"]));
        assert_eq!(e.cursor(), (1, 0));
        // Left at a line's start goes to the end of the line above, Right back down.
        assert_eq!(e.handle(Event::Left), EditOutcome::Redraw);
        assert_eq!(e.cursor(), (0, 21));
        e.handle(Event::Right);
        assert_eq!(e.cursor(), (1, 0));
        assert_eq!(e.handle(Event::Backspace), EditOutcome::Redraw);
        assert_eq!(e.lines(), lines(&["vboot harddisk=/a.img pause"]));
        assert_eq!(e.cursor(), (0, 21));
        // Enter at the end adds an empty line; typing fills it.
        e.handle(Event::End);
        e.handle(Event::Enter);
        typed(&mut e, "insmod x");
        assert_eq!(e.lines(), lines(&["vboot harddisk=/a.img pause", "insmod x"]));
        // Delete at a line's end joins the next one onto it.
        keys(&mut e, &[Event::Up, Event::End, Event::Delete]);
        assert_eq!(e.lines(), lines(&["vboot harddisk=/a.img pauseinsmod x"]));
        keys(&mut e, &[Event::Delete, Event::Delete, Event::Delete, Event::Delete, Event::Delete, Event::Delete]);
        assert_eq!(e.lines(), lines(&["vboot harddisk=/a.img pause x"]));
        e.handle(Event::Backspace);
        assert_eq!(e.lines(), lines(&["vboot harddisk=/a.img paus x"]));
    }

    #[test]
    fn the_cursor_stays_inside_at_every_edge() {
        let mut e = Editor::new(&lines(&["ab", "abcdef", ""]));
        use EditOutcome::None;
        assert_eq!(keys(&mut e, &[Event::Up, Event::Left, Event::Home, Event::Backspace]), vec![None; 4]);
        assert_eq!(e.cursor(), (0, 0));
        keys(&mut e, &[Event::Down, Event::End]);
        assert_eq!(e.cursor(), (1, 6));
        // Up keeps the column where the line above is long enough, else its end.
        e.handle(Event::Up);
        assert_eq!(e.cursor(), (0, 2));
        keys(&mut e, &[Event::Down, Event::Down]);
        assert_eq!(e.cursor(), (2, 0));
        assert_eq!(keys(&mut e, &[Event::Down, Event::Right, Event::End, Event::Delete]), vec![None; 4]);
        // Keys with no meaning here change nothing.
        assert_eq!(keys(&mut e, &[Event::Tick(5), Event::Other, Event::PageUp, Event::Control('a')]), vec![None; 4]);
        assert_eq!(e.lines(), lines(&["ab", "abcdef", ""]));
        // An empty body has one line to type into.
        let mut e = Editor::new(&[]);
        typed(&mut e, "vboot recover_mbr");
        assert_eq!(e.lines(), lines(&["vboot recover_mbr"]));
    }

    #[test]
    fn typing_stops_at_the_bounds() {
        let long = "x".repeat(MAX_LINE_CHARS - 1);
        let mut e = Editor::new(&[long.clone(), long.clone()]);
        e.handle(Event::End);
        assert_eq!(e.handle(Event::Char('y')), EditOutcome::Redraw);
        assert_eq!(e.handle(Event::Char('z')), EditOutcome::None);
        assert_eq!(e.lines()[0].chars().count(), MAX_LINE_CHARS);
        // A join past the bound keeps the rest as a line of its own.
        e.handle(Event::Delete);
        assert_eq!(e.lines().iter().map(|l| l.chars().count()).collect::<Vec<_>>(), vec![MAX_LINE_CHARS, MAX_LINE_CHARS - 1]);
        let mut e = Editor::new(&vec![String::new(); MAX_LINES + 5]);
        assert_eq!(e.lines().len(), MAX_LINES);
        assert_eq!(e.handle(Event::Enter), EditOutcome::None);
    }

    #[test]
    fn long_lines_wrap_with_a_mark() {
        let mut e = Editor::new(&lines(&["vboot harddisk=/a/very/long/path.img", "b"]));
        let v = e.view(11, 10);
        assert_eq!(v.rows, lines(&["vboot hard\\", "disk=/a/ve\\", "ry/long/pa\\", "th.img", "b"]));
        assert_eq!(v.cursor, (0, 0));
        assert!(!v.more_above && !v.more_below);
        e.handle(Event::End);
        assert_eq!(e.view(11, 10).cursor, (3, 6));
        // A line exactly filling its rows gets an empty row for the cursor after it.
        let mut e = Editor::new(&lines(&["0123456789"]));
        e.handle(Event::End);
        let v = e.view(11, 10);
        assert_eq!(v.rows, lines(&["0123456789\\", ""]));
        assert_eq!(v.cursor, (1, 0));
        assert!(v.rows.iter().all(|r| r.chars().count() <= 11));
    }

    #[test]
    fn the_view_turns_pages_to_follow_the_cursor() {
        let body: Vec<String> = (0..10).map(|i| alloc::format!("line {}", i)).collect();
        let mut e = Editor::new(&body);
        let v = e.view(20, 4);
        assert_eq!(v.rows, lines(&["line 0", "line 1", "line 2", "line 3"]));
        assert!(!v.more_above && v.more_below);
        for _ in 0..5 {
            e.handle(Event::Down);
        }
        let v = e.view(20, 4);
        assert_eq!(v.rows, lines(&["line 4", "line 5", "line 6", "line 7"]));
        assert_eq!(v.cursor, (1, 0));
        assert!(v.more_above && v.more_below);
        for _ in 0..5 {
            e.handle(Event::Down);
        }
        let v = e.view(20, 4);
        assert_eq!(v.rows, lines(&["line 8", "line 9"]));
        assert!(v.more_above && !v.more_below);
        assert_eq!(v.cursor, (1, 0));
        // Degenerate sizes do not panic.
        assert!(e.view(0, 0).rows.is_empty());
        assert_eq!(e.view(1, 1).rows.len(), 1);
    }
}
