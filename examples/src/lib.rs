//! Helpers shared by the examples and their tests.

pub mod idle;
