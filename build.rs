//! Copies the official socket.io browser client out of node_modules (installed
//! by `npm ci` from the committed package-lock.json) so the hub can serve it
//! to its dashboard from the binary itself: no CDN, nothing fetched at run
//! time. Without node_modules the hub still builds; its dashboard then says
//! the client is missing.

use std::path::PathBuf;

fn main() {
    let source = PathBuf::from("node_modules/socket.io-client/dist/socket.io.min.js");
    let target = PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets OUT_DIR"))
        .join("socket.io.min.js");
    println!("cargo:rerun-if-changed={}", source.display());
    println!("cargo:rerun-if-changed=package-lock.json");
    match std::fs::read(&source) {
        Ok(client) => std::fs::write(&target, client).expect("writing socket.io.min.js to OUT_DIR"),
        Err(_) => {
            println!(
                "cargo:warning=node_modules/socket.io-client is missing (run `npm ci`); the dashboard will not work"
            );
            std::fs::write(
                &target,
                "document.body.innerHTML = '<p>This caps hub was built without the socket.io client: run npm ci and rebuild.</p>';\n",
            )
            .expect("writing a placeholder to OUT_DIR");
        }
    }
}
