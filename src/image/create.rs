//! Creating images.
