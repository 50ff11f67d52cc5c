//! Rebuilds the crate when a file of `console/` is added, changed or removed: `rust-embed`
//! embeds that folder at build time but only tracks the files that existed at the last build.

fn main() {
    println!("cargo:rerun-if-changed=console");
}
