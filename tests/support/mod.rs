//! Helpers shared by the integration tests (each test crate uses what it needs).

#![allow(dead_code)]

pub mod clip;
pub mod procs;
pub mod synth;
