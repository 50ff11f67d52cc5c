//! `holdfast demo`: simulated cameras plus the daemon on a temporary data directory, and a printed
//! admin token: the newcomer's first command.

use std::net::SocketAddr;

use sha2::{Digest, Sha256};

use crate::camsim::clip::Clip;
use crate::camsim::{Camsim, CamsimConfig, DEFAULT_CLIP};
use crate::config::Config;

/// Runs camsim with `cameras` streams and the daemon listening on `listen`, until Ctrl-C.
pub async fn run(cameras: usize, listen: SocketAddr) -> anyhow::Result<()> {
    let clip = Clip::from_annex_b(DEFAULT_CLIP)?;
    let sim = Camsim::start(
        "127.0.0.1:0".parse()?,
        clip,
        CamsimConfig {
            streams: cameras,
            fps: 25,
        },
    )
    .await?;
    let dir = tempfile::Builder::new()
        .prefix("holdfast-demo-")
        .tempdir()?;
    let token = hex::encode(rand::random::<[u8; 32]>());
    let token_hash = hex::encode(Sha256::digest(token.as_bytes()));
    let mut toml = format!(
        r#"[storage]
data_dir = "{data}"
bucket = "1h"

[http]
listen = "{listen}"

[policies.seven-days]
video = "7d"
keytags = "7d"

[[sites]]
id = "demo-complex"
policy = "seven-days"

[[users]]
name = "demo-admin"
role = "manager"
token_sha256 = "{token_hash}"
sites = ["*"]
"#,
        data = dir.path().join("data").display(),
    );
    for i in 0..cameras {
        toml.push_str(&format!(
            "\n[[cameras]]\nid = \"demo-cam-{i}\"\nsite = \"demo-complex\"\nurl = \"{}\"\n",
            sim.url(i)
        ));
    }
    // The logbook's MAC key and checkpoints live beside the data dir, as they would outside it
    // on a real server.
    let key_file = dir.path().join("logbook.key");
    crate::logbook::write_new_key(&key_file)?;
    toml.push_str(&format!(
        "\n[logbook]\nkey_file = \"{}\"\ncheckpoint_dir = \"{}\"\n",
        key_file.display(),
        dir.path().join("checkpoints").display()
    ));
    let config_path = dir.path().join("holdfast.toml");
    std::fs::write(&config_path, &toml)?;
    let config = Config::parse(&toml).map_err(|e| anyhow::anyhow!("demo config: {e}"))?;

    println!(
        "holdfast demo: {cameras} simulated cameras at rtsp://{}/cam0..",
        sim.addr
    );
    println!("  config:      {}", config_path.display());
    println!("  data dir:    {}", dir.path().join("data").display());
    println!("  admin token: {token}");
    println!();
    println!("Try:");
    println!("  curl http://{listen}/healthz");
    println!("  curl -H 'Authorization: Bearer {token}' http://{listen}/api/v1/cameras");
    println!(
        "  curl -H 'Authorization: Bearer {token}' \"http://{listen}/api/v1/cameras/demo-cam-0/recordings?from=$(date -u -d '-10 min' +%FT%TZ)&to=$(date -u -d '+1 min' +%FT%TZ)\""
    );
    println!("  curl http://{listen}/metrics | grep holdfast_camera");
    println!("Ctrl-C stops the demo and removes its data directory.");
    println!();
    let result = crate::daemon::run(config, None).await;
    sim.stop();
    result
}
