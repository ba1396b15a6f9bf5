//! Rewrites docs/openapi.json from the code: `cargo run --example write_openapi`.
//! The test that checks the committed copy only ever reads it.

use utoipa::OpenApi;

fn main() -> std::io::Result<()> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/docs/openapi.json");
    let document = mpc_action_gateway::http::openapi::ApiDoc::openapi()
        .to_pretty_json()
        .map_err(std::io::Error::other)?;
    std::fs::write(path, document + "\n")?;
    println!("wrote {path}");
    Ok(())
}
