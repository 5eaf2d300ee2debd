//! Generates the prost types of `proto/Message.proto`. protox parses the file (no `protoc`
//! needed), prost-build writes the Rust code from its descriptors.

fn main() {
    let proto = "proto/Message.proto";
    println!("cargo:rerun-if-changed={proto}");
    let descriptors = match protox::compile([proto], ["proto"]) {
        Ok(descriptors) => descriptors,
        Err(e) => panic!("cannot compile {proto}: {e}"),
    };
    if let Err(e) = prost_build::Config::new().compile_fds(descriptors) {
        panic!("cannot generate the prost code of {proto}: {e}");
    }
}
