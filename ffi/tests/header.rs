//! c-include/tunnel.h is what cbindgen makes of this crate now: fails when the committed header
//! is stale (run with `TUNNEL_BLESS=1` to rewrite it).

use std::path::Path;

#[test]
fn header_is_current() {
    let crate_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    let config =
        cbindgen::Config::from_file(crate_dir.join("cbindgen.toml")).expect("cbindgen.toml");
    let mut fresh = Vec::new();
    cbindgen::Builder::new()
        .with_crate(crate_dir)
        .with_config(config)
        .generate()
        .expect("cbindgen generates the header")
        .write(&mut fresh);
    let fresh = String::from_utf8(fresh).expect("UTF-8");
    let path = crate_dir.join("../c-include/tunnel.h");
    if std::env::var_os("TUNNEL_BLESS").is_some() {
        std::fs::write(&path, &fresh).expect("write c-include/tunnel.h");
        return;
    }
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        committed == fresh,
        "c-include/tunnel.h is stale: run `TUNNEL_BLESS=1 cargo test -p splice-tunnel-ffi --test header` and commit it"
    );
}
