//! Integration tests of the decision engine: the table in `tests/cases.toml` against a fake home
//! directory, and the public checks exec calls on their own.

mod api;
mod cases;
mod fixture;
