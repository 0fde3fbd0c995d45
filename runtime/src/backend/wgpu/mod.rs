//! The wgpu backend.

pub mod adapter;
pub mod codegen;
pub mod group;
mod seam;
