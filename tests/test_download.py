"""Files named by http(s) URL: fetched once into torch hub's cache, checked, never left half-written.
Every test serves its files from a local HTTP server on 127.0.0.1; nothing leaves the machine."""

import hashlib
import http.server
import os
import shutil
import subprocess
import sys
import threading

import numpy as np
import pytest
import torch
import torchvision

from conftest import save_random_teacher, tiny_song_config
from pid_diffusion.checkpoint import load_teacher
from pid_diffusion.download import DownloadError, cache_path, local_file
from pid_diffusion.evaluation.detectors import load_detector
from pid_diffusion.evaluation.statistics import load_reference_stats
from pid_diffusion.lpips import LPIPS


class Server:
    """Serves `files` {name: bytes}; 'truncated.pt' announces more bytes than it sends."""

    def __init__(self, files):
        self.files, self.requests = files, []
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                name = self.path.lstrip("/")
                server.requests.append(name)
                data = server.files.get(name)
                if data is None:
                    self.send_error(404, "Not Found")
                    return
                self.send_response(200)
                self.send_header("Content-Length", str(len(data) * (2 if name == "truncated.pt" else 1)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/"

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def hub(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    return tmp_path / "torch_home" / "hub" / "checkpoints"


@pytest.fixture
def served(tmp_path):
    payload = os.urandom(3000)
    digest = hashlib.sha256(payload).hexdigest()
    files = {"weights.pt": payload, f"named-{digest[:8]}.pt": payload, "named-deadbeef.pt": payload,
             "truncated.pt": payload}
    server = Server(files)
    yield server, payload, digest
    server.close()


def leftovers(folder):
    return sorted(os.listdir(folder)) if folder.exists() else []


def test_a_url_is_downloaded_once_into_the_hub_cache_and_reused(hub, served):
    server, payload, digest = served
    path = local_file(server.url + "weights.pt", "the test file")
    assert path == str(hub / "weights.pt") and open(path, "rb").read() == payload
    assert local_file(server.url + "weights.pt", "the test file") == path  # reused: not fetched again
    assert server.requests == ["weights.pt"]
    assert local_file(server.url + f"named-{digest[:8]}.pt", "the test file")  # the name's hash checks out
    assert local_file("model_zoo/some.pt", "a path") == "model_zoo/some.pt"  # paths pass through


def test_a_failed_download_says_which_file_and_why_and_keeps_nothing(hub, served):
    server, payload, digest = served
    for name, reason in (("missing.pt", "HTTP 404"), ("truncated.pt", "broke off after 3000 of 6000 bytes"),
                         ("named-deadbeef.pt", "not the expected deadbeef"), ("weights.pt", "not the expected 00ff")):
        with pytest.raises(DownloadError, match=f"the teacher: .*{reason}"):
            local_file(server.url + name, "the teacher", sha256="00ff" if name == "weights.pt" else None)
        assert leftovers(hub) == [], name  # no partial file under any name
    with pytest.raises(DownloadError, match="cannot download http://127.0.0.1:9/x.pt"):  # nobody listens on port 9
        local_file("http://127.0.0.1:9/x.pt", "the teacher")
    with pytest.raises(DownloadError, match="names no file"):
        local_file(server.url, "the teacher")
    # a damaged file in the cache is reported, not used
    hub.mkdir(parents=True, exist_ok=True)
    (hub / "named-deadbeef.pt").write_bytes(b"something else")
    with pytest.raises(DownloadError, match="does not match its SHA-256 deadbeef; delete it"):
        local_file(server.url + "named-deadbeef.pt", "the teacher")


def test_every_file_the_tools_load_accepts_a_url(hub, tmp_path):
    teacher_file = tmp_path / "served" / "teacher.pt"
    teacher_file.parent.mkdir()
    save_random_teacher(teacher_file, tiny_song_config())
    np.savez(tmp_path / "served" / "stats.npz", mu=np.zeros(4), sigma=np.eye(4))
    torch.save(torchvision.models.vgg16(weights=None).state_dict(), tmp_path / "served" / "vgg16.pth")
    torch.save([torch.rand(1, c, 1, 1) for c in (64, 128, 256, 512, 512)], tmp_path / "served" / "lin.pt")
    server = Server({p.name: p.read_bytes() for p in (tmp_path / "served").iterdir()})
    try:
        teacher = load_teacher(server.url + "teacher.pt")
        assert teacher.img_resolution == 8 and (hub / "teacher.pt").is_file()
        mu, sigma = load_reference_stats(server.url + "stats.npz", dim=4)
        assert mu.shape == (4,) and sigma.shape == (4, 4)
        lpips = LPIPS(server.url + "vgg16.pth", server.url + "lin.pt")
        assert lpips(torch.rand(1, 3, 16, 16), torch.rand(1, 3, 16, 16)).shape == (1,)
        with pytest.raises(DownloadError, match="the Inception detector: cannot download .*HTTP 404"):
            load_detector("inception", server.url + "inception-2015-12-05.pt")
    finally:
        server.close()
    assert cache_path("https://example.org/a/b/edm.pkl").endswith(os.path.join("checkpoints", "edm.pkl"))


MPIRUN = shutil.which("mpirun", path=os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", ""))


@pytest.mark.skipif(MPIRUN is None, reason="no mpirun: install the mpich extra (pip install -e '.[mpich]')")
def test_under_two_processes_rank_0_downloads_and_the_other_waits(tmp_path, served):
    server, payload, _ = served
    # each rank writes what it got to its own file (printed lines of two processes interleave)
    program = ("import os; from pid_diffusion import dist; from pid_diffusion.download import local_file; dist.init(); "
               f"path = local_file({server.url + 'weights.pt'!r}, 'the teacher'); "
               f"open(os.path.join({str(tmp_path)!r}, f'rank{{dist.info().rank}}'), 'w').write("
               "str(len(open(path, 'rb').read()))); dist.shutdown()")
    env = {**os.environ, "TORCH_HOME": str(tmp_path / "torch_home")}
    done = subprocess.run([MPIRUN, "-np", "2", sys.executable, "-c", program], env=env, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    assert [(tmp_path / f"rank{r}").read_text() for r in (0, 1)] == [str(len(payload))] * 2
    assert server.requests == ["weights.pt"]
