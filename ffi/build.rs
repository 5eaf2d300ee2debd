//! Gives libtunnel.so its soname, so that programs linked against it load `libtunnel.so.0`
//! (the ABI's major version) and a compatible update can replace the file underneath them.

fn main() {
    println!("cargo:rustc-cdylib-link-arg=-Wl,-soname,libtunnel.so.0");
}
