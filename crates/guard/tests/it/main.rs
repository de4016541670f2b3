//! Integration tests of the decision engine: the table of cases in `tests/cases.toml`.
