//! Which authentication a camera asks for, found out before retina gets the password.
//!
//! retina answers a `401` with the scheme http-auth prefers from the camera's `WWW-Authenticate`
//! challenges: Digest if offered, else Basic, which sends the password in clear (base64) on a plain
//! `rtsp://` connection. Before each session of a plain-RTSP camera with credentials and without
//! `allow_basic_auth`, [`probe`] sends one credential-less DESCRIBE on a connection of its own,
//! reads the response head (at most [`MAX_HEAD`] bytes, within the caller's timeout), joins
//! every `WWW-Authenticate` header with ", " exactly as retina does, and lets http-auth pick as
//! retina will ([`offer`]). Only Basic means the session is refused and the password never sent.
//!
//! The probe sees what the camera offers to anyone; an active attacker on the network could answer
//! the probe with Digest and retina's request with Basic. Against that only `rtsps://` helps.

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Largest response head read.
pub const MAX_HEAD: usize = 16 * 1024;
/// Default port of `rtsp://`.
pub const RTSP_DEFAULT_PORT: u16 = 554;

/// What a camera's answer to a credential-less DESCRIBE says about its authentication.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Offer {
    /// No challenge: it answered the DESCRIBE (200) without asking for credentials.
    NoChallenge,
    /// Neither 200 nor a 401 challenge (another status, or no status): what retina would be
    /// asked later cannot be told, so the password is not sent (fail closed).
    Unanswered(Option<u16>),
    /// retina would answer with Digest.
    Digest,
    /// retina would answer with Basic: the password would go in clear.
    BasicOnly,
    /// The challenge is not understood (retina would fail on it too).
    Unparseable,
}

/// What retina would do with the response head `head` (status line and headers).
pub fn offer(head: &str) -> Offer {
    let mut lines = head.split("\r\n").flat_map(|l| l.split('\n'));
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse::<u16>().ok());
    match status {
        Some(401) => {}
        Some(200) => return Offer::NoChallenge,
        other => return Offer::Unanswered(other),
    }
    let challenges: Vec<&str> = lines
        .filter_map(|l| {
            let (name, value) = l.split_once(':')?;
            name.trim()
                .eq_ignore_ascii_case("www-authenticate")
                .then_some(value.trim())
        })
        .collect();
    if challenges.is_empty() {
        return Offer::Unanswered(Some(401));
    }
    match http_auth::PasswordClient::try_from(challenges.join(", ").as_str()) {
        Ok(http_auth::PasswordClient::Digest(_)) => Offer::Digest,
        Ok(http_auth::PasswordClient::Basic(_)) => Offer::BasicOnly,
        // A future scheme of http-auth: not known to be safe.
        #[allow(unreachable_patterns)]
        Ok(_) => Offer::Unparseable,
        Err(_) => Offer::Unparseable,
    }
}

/// Sends one DESCRIBE without credentials to `url` (plain `rtsp://`) and says what the camera
/// offers. Errors are free of the URL; the caller applies its timeout.
pub async fn probe(url: &url::Url, user_agent: &str) -> Result<Offer, String> {
    let port = url.port().unwrap_or(RTSP_DEFAULT_PORT);
    let mut tcp = match url.host() {
        Some(url::Host::Domain(d)) => TcpStream::connect((d, port)).await,
        Some(url::Host::Ipv4(ip)) => TcpStream::connect((ip, port)).await,
        Some(url::Host::Ipv6(ip)) => TcpStream::connect((ip, port)).await,
        None => return Err("the camera URL has no host".to_owned()),
    }
    .map_err(|e| format!("connecting to the camera: {e}"))?;
    let request = format!(
        "DESCRIBE {url} RTSP/1.0\r\nCSeq: 1\r\nAccept: application/sdp\r\nUser-Agent: {user_agent}\r\n\r\n"
    );
    tcp.write_all(request.as_bytes())
        .await
        .map_err(|e| format!("sending DESCRIBE: {e}"))?;
    let mut head = Vec::with_capacity(1024);
    let mut buf = [0u8; 2048];
    loop {
        if let Some(end) = memchr::memmem::find(&head, b"\r\n\r\n") {
            head.truncate(end);
            break;
        }
        if head.len() > MAX_HEAD {
            return Err(format!(
                "the camera's answer to DESCRIBE has a head over {MAX_HEAD} bytes"
            ));
        }
        let n = tcp
            .read(&mut buf)
            .await
            .map_err(|e| format!("reading the answer to DESCRIBE: {e}"))?;
        if n == 0 {
            return Err("the camera closed the connection before answering DESCRIBE".to_owned());
        }
        head.extend_from_slice(&buf[..n]);
    }
    Ok(offer(&String::from_utf8_lossy(&head)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_basic_is_recognised_as_basic_only() {
        let basic = "RTSP/1.0 401 Unauthorized\r\nCSeq: 1\r\nWWW-Authenticate: Basic realm=\"cam\"";
        assert_eq!(offer(basic), Offer::BasicOnly);
        let digest = "RTSP/1.0 401 Unauthorized\r\nCSeq: 1\r\nwww-authenticate: Digest \
                      realm=\"cam\", nonce=\"abc\"";
        assert_eq!(offer(digest), Offer::Digest);
    }

    #[test]
    fn digest_anywhere_among_the_challenges_wins_as_in_retina() {
        // Two headers, joined the way retina joins them: http-auth picks Digest.
        let both = "RTSP/1.0 401 Unauthorized\r\nWWW-Authenticate: Basic realm=\"cam\"\r\n\
                    WWW-Authenticate: Digest realm=\"cam\", nonce=\"n1\"\r\nCSeq: 1";
        assert_eq!(offer(both), Offer::Digest);
        let one_line = "RTSP/1.0 401 Unauthorized\r\nWWW-Authenticate: Basic realm=\"x\", \
                        Digest realm=\"x\", nonce=\"n\"";
        assert_eq!(offer(one_line), Offer::Digest);
    }

    #[test]
    fn no_challenge_and_nonsense_are_told_apart() {
        assert_eq!(offer("RTSP/1.0 200 OK\r\nCSeq: 1"), Offer::NoChallenge);
        // Anything else fails closed: the password is not sent on a guess.
        assert_eq!(
            offer("RTSP/1.0 404 Not Found\r\nCSeq: 1"),
            Offer::Unanswered(Some(404))
        );
        assert_eq!(
            offer("RTSP/1.0 401 Unauthorized\r\nCSeq: 1"),
            Offer::Unanswered(Some(401))
        );
        assert_eq!(
            offer("RTSP/1.0 401 Unauthorized\r\nWWW-Authenticate: Bearer x=\"y\""),
            Offer::Unparseable
        );
        assert_eq!(offer(""), Offer::Unanswered(None));
    }
}
