//! `holdfast demo`: simulated cameras plus the daemon on a temporary data directory, and a printed
//! admin token: the newcomer's first command. It prints commands to try, each of which works
//! against the demo as printed (tests/demo.rs runs them): status, recordings, metrics, an export
//! with a reason and purpose, a hold and its release, a key-tag submit and query, and the logbook
//! check. The demo user's role may do all of it (`[roles.demo_admin]`); key tags are submitted
//! for the one site, with a door name, as an access system would.

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

[roles.demo_admin]
permissions = ["cameras_status", "view", "export", "place_hold", "release_hold", "erase", "keytags_read", "keytags_write", "logbook_read", "sign_off"]

[[users]]
name = "demo-admin"
role = "demo_admin"
token_sha256 = "{token_hash}"
sites = ["demo-complex"]
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
    println!("  console:     http://{listen}/  (open it in a browser; sign in with the admin token)");
    println!();
    for line in commands(&listen, &token, &config_path) {
        println!("{line}");
    }
    println!("Ctrl-C stops the demo and removes its data directory.");
    println!();
    let result = crate::daemon::run(config, None).await;
    sim.stop();
    result
}

/// The commands `holdfast demo` prints under "Try:" (shell lines; `$HOLD` is set by the hold
/// line and used by the release line, so run them in one shell, in order).
pub fn commands(listen: &SocketAddr, token: &str, config: &std::path::Path) -> Vec<String> {
    let auth = format!("-H 'Authorization: Bearer {token}'");
    let json = "-H 'Content-Type: application/json'";
    let exe = std::env::current_exe()
        .ok()
        .map_or_else(|| "holdfast".to_owned(), |p| p.display().to_string());
    let base = format!("http://{listen}");
    vec![
        "Try (in one shell, in this order):".to_owned(),
        "  # status, cameras, what is recorded, metrics".to_owned(),
        format!("  curl {base}/healthz"),
        format!("  curl {auth} {base}/api/v1/cameras"),
        format!(
            "  curl {auth} \"{base}/api/v1/cameras/demo-cam-0/recordings?from=$(date -u -d '-10 min' +%FT%TZ)&to=$(date -u -d '+1 min' +%FT%TZ)\""
        ),
        format!("  curl -s {base}/metrics | grep holdfast_camera_up"),
        "  # export the last 30 s of demo-cam-0 as MP4: a reason and a purpose, logged first".to_owned(),
        format!(
            "  curl -fsS {auth} -o demo-cam-0.mp4 -D - \"{base}/api/v1/cameras/demo-cam-0/export.mp4?from=$(date -u -d '-30 sec' +%FT%TZ)&to=$(date -u +%FT%TZ)&reason=demo+incident+2026-1&purpose=incident\""
        ),
        "  # place a hold on the last 10 minutes of demo-cam-0 (kept past retention), then release it"
            .to_owned(),
        format!(
            "  HOLD=$(curl -fsS {auth} {json} -d \"{{\\\"cameras\\\":[\\\"demo-cam-0\\\"],\\\"from\\\":\\\"$(date -u -d '-10 min' +%FT%TZ)\\\",\\\"to\\\":\\\"$(date -u +%FT%TZ)\\\",\\\"reason\\\":\\\"demo incident 2026-1\\\"}}\" {base}/api/v1/holds | grep -o '\"id\":[0-9]*' | head -1 | cut -d: -f2) && echo \"hold $HOLD placed\""
        ),
        format!("  curl -fsS {auth} {base}/api/v1/holds/$HOLD"),
        format!(
            "  curl -fsS {auth} {json} -d '{{\"reason\":\"demo: no longer needed\"}}' {base}/api/v1/holds/$HOLD/release"
        ),
        "  # a key-tag event (as the door system sends it), then who used that tag".to_owned(),
        format!(
            "  curl -fsS {auth} {json} -d \"[{{\\\"tag\\\":\\\"04A1B2C3\\\",\\\"door\\\":\\\"main-entrance\\\",\\\"time\\\":\\\"$(date -u +%FT%TZ)\\\"}}]\" {base}/api/v1/keytags/events"
        ),
        format!(
            "  curl -fsS {auth} \"{base}/api/v1/keytags/events?tag=04A1B2C3&purpose=tag-check&reason=demo+lost+tag&from=$(date -u -d '-1 hour' +%FT%TZ)&to=$(date -u -d '+1 min' +%FT%TZ)\""
        ),
        "  # every look above is in the logbook; check its chain and checkpoints".to_owned(),
        format!("  curl -fsS {auth} {base}/api/v1/logbook/verify"),
        format!("  {exe} logbook verify --config {}", config.display()),
    ]
}
