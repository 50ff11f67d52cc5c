#!/usr/bin/python3
"""A real RTSP camera stand-in for holdfast's integration tests: GStreamer's RTSP server.

Run with Debian's /usr/bin/python3 (it has the GStreamer bindings). Serves on 127.0.0.1:PORT:

  /cam0 .. /cam{N-1}   live H.264 (videotestsrc ! x264enc), real RTP timestamps
  --audio              every mount also offers a PCMU audio stream
  --digest USER:PASS   digest authentication is required
  --basic USER:PASS    Basic authentication is required (and the only method offered)
  --tls-cert PEM --tls-key PEM   the server speaks RTSP over TLS (rtsps) with this certificate
  --resize-after S     the picture changes from 640x360 to 320x240 after S seconds (new SPS/PPS)
  --broken-clip FILE   /broken loops a pre-encoded file: every frame has the SAME RTP timestamp

Every 0.2 s it writes --stats FILE: {"mount": frames sent} counted from RTP marker bits at the
payloader, so a test can compare what was sent with what holdfast received, and "setups": the
URL of every SETUP request (which streams a client set up), and "authorization": per mount, the
Authorization header of every DESCRIBE, SETUP and PLAY request that carried one (recorded before
the server checks it). It prints "ready"
once listening, and stops on SIGTERM.
"""

import argparse
import json
import os
import signal
import sys
import threading

import gi

gi.require_version("Gst", "1.0")
gi.require_version("GstRtsp", "1.0")
gi.require_version("GstRtspServer", "1.0")
from gi.repository import Gio, GLib, Gst, GstRtsp, GstRtspServer  # noqa: E402

Gst.init(None)

FRAMES = {}
SETUPS = []
AUTHORIZATION = {}
LOCK = threading.Lock()


def count_marker(mount):
    def probe(pad, info):
        bufs = []
        if info.type & Gst.PadProbeType.BUFFER_LIST:
            lst = info.get_buffer_list()
            bufs = [lst.get(i) for i in range(lst.length())]
        elif info.type & Gst.PadProbeType.BUFFER:
            bufs = [info.get_buffer()]
        n = sum(1 for b in bufs if b is not None and b.has_flags(Gst.BufferFlags.MARKER))
        if n:
            with LOCK:
                FRAMES[mount] = FRAMES.get(mount, 0) + n
        return Gst.PadProbeReturn.OK

    return probe


class Factory(GstRtspServer.RTSPMediaFactory):
    def __init__(self, mount, launch, resize_after):
        super().__init__()
        self.mount = mount
        self.launch = launch
        self.resize_after = resize_after
        self.set_launch(launch)
        self.set_shared(True)
        self.connect("media-configure", self.on_configure)

    def on_configure(self, _factory, media):
        bin_ = media.get_element()
        pay = bin_.get_by_name("pay0")
        pay.get_static_pad("src").add_probe(
            Gst.PadProbeType.BUFFER | Gst.PadProbeType.BUFFER_LIST, count_marker(self.mount)
        )
        if self.resize_after:
            caps = bin_.get_by_name("size")

            def resize():
                caps.set_property(
                    "caps", Gst.Caps.from_string("video/x-raw,width=320,height=240,framerate=25/1")
                )
                return False

            GLib.timeout_add(int(self.resize_after * 1000), resize)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--cameras", type=int, default=1)
    ap.add_argument("--audio", action="store_true")
    ap.add_argument("--digest")
    ap.add_argument("--basic")
    ap.add_argument("--tls-cert")
    ap.add_argument("--tls-key")
    ap.add_argument("--resize-after", type=float)
    ap.add_argument("--broken-clip")
    ap.add_argument("--stats", required=True)
    a = ap.parse_args()

    server = GstRtspServer.RTSPServer()
    server.set_address("127.0.0.1")
    server.set_service(str(a.port))
    mounts = server.get_mount_points()

    video = (
        "videotestsrc is-live=true pattern=ball ! videoscale ! "
        "capsfilter name=size caps=video/x-raw,width=640,height=360,framerate=25/1 ! "
        "videoconvert ! x264enc tune=zerolatency speed-preset=ultrafast key-int-max=25 bitrate=800 ! "
        "rtph264pay name=pay0 pt=96 config-interval=-1"
    )
    audio = " audiotestsrc is-live=true ! audioconvert ! mulawenc ! rtppcmupay name=pay1 pt=0"
    factories = []
    for i in range(a.cameras):
        launch = "( " + video + (audio if a.audio else "") + " )"
        factories.append((f"/cam{i}", Factory(f"/cam{i}", launch, a.resize_after)))
    if a.broken_clip:
        launch = (
            f"( multifilesrc location={a.broken_clip} loop=true ! h264parse ! "
            "rtph264pay name=pay0 pt=96 config-interval=-1 )"
        )
        factories.append(("/broken", Factory("/broken", launch, None)))

    auth = None
    if a.digest or a.basic or a.tls_cert:
        auth = GstRtspServer.RTSPAuth()
        token = GstRtspServer.RTSPToken()
        token.set_string("media.factory.role", "user")
        if a.digest:
            user, password = a.digest.split(":", 1)
            auth.add_digest(user, password, token)
            auth.set_supported_methods(GstRtsp.RTSPAuthMethod.DIGEST)
        elif a.basic:
            user, password = a.basic.split(":", 1)
            auth.add_basic(GstRtspServer.RTSPAuth.make_basic(user, password), token)
            auth.set_supported_methods(GstRtsp.RTSPAuthMethod.BASIC)
        else:
            # TLS without user authentication: everyone gets the factory role.
            auth.set_default_token(token)
        if a.tls_cert:
            cert = Gio.TlsCertificate.new_from_files(a.tls_cert, a.tls_key)
            auth.set_tls_certificate(cert)
        server.set_auth(auth)
    for path, f in factories:
        if auth is not None:
            f.add_role_from_structure(
                Gst.Structure.from_string(
                    "user, media.factory.access=(boolean)true, media.factory.construct=(boolean)true"
                )[0]
            )
        mounts.add_factory(path, f)

    def on_setup(_client, ctx):
        with LOCK:
            SETUPS.append(ctx.uri.get_request_uri())

    def on_request(_client, ctx):
        ok, value = ctx.request.get_header(GstRtsp.RTSPHeaderField.AUTHORIZATION, 0)
        if ok == GstRtsp.RTSPResult.OK and value is not None and ctx.uri is not None:
            with LOCK:
                AUTHORIZATION.setdefault(ctx.uri.abspath, []).append(value)
        return GstRtsp.RTSPStatusCode.OK

    def on_client(_s, client):
        client.connect("setup-request", on_setup)
        for sig in ("pre-describe-request", "pre-setup-request", "pre-play-request"):
            client.connect(sig, on_request)

    server.connect("client-connected", on_client)

    if server.attach(None) == 0:
        print("could not listen", file=sys.stderr)
        sys.exit(1)

    def write_stats():
        with LOCK:
            data = json.dumps(dict(FRAMES, setups=SETUPS, authorization=AUTHORIZATION))
        tmp = a.stats + ".tmp"
        with open(tmp, "w") as fh:
            fh.write(data)
        os.replace(tmp, a.stats)
        return True

    GLib.timeout_add(200, write_stats)
    loop = GLib.MainLoop()
    signal.signal(signal.SIGTERM, lambda *_: (write_stats(), loop.quit()))
    print("ready", flush=True)
    loop.run()


if __name__ == "__main__":
    main()
