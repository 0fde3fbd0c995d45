//! gyre-bench
