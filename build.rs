//! Compiles our own `.proto` files with the pure-Rust `protox` compiler, so building mlprune needs
//! no system `protoc`. Maps become `BTreeMap` so that encoding is deterministic.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protos = ["proto/Model.proto", "proto/FeatureTypes.proto", "proto/MIL.proto"];
    for p in protos {
        println!("cargo:rerun-if-changed={p}");
    }
    let descriptors = protox::compile(protos, ["proto"])?;
    prost_build::Config::new()
        .btree_map(["."])
        .include_file("coreml_proto.rs")
        .compile_fds(descriptors)?;
    Ok(())
}
