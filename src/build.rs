//! Build script: rebuild when assets change so new files are embedded.
fn main() {
    println!("cargo:rerun-if-changed=assets");
}
