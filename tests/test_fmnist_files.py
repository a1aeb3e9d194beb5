"""Fashion-MNIST's files, found and named when they are not sound: truncated (gzip or raw),
a foreign file or one cut inside its header, images and labels that do not match, and a
download that is never answered or fails (one line, with how to install the data)."""
import gzip
import re
import socket
import struct
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from budgetvit.config import ConfigError
from budgetvit.data import fashion_mnist


def idx_bytes(array: np.ndarray) -> bytes:
    """An unsigned-byte IDX file of `array`."""
    return (b"\x00\x00\x08" + bytes([array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
            + array.astype(np.uint8).tobytes())


def write_fmnist(root: Path, images: int = 5, labels: int = 5) -> tuple[Path, Path]:
    rng = np.random.default_rng(0)
    x, y = (root / "train-images-idx3-ubyte.gz", root / "train-labels-idx1-ubyte.gz")
    root.mkdir(parents=True, exist_ok=True)
    x.write_bytes(gzip.compress(idx_bytes(rng.integers(0, 256, (images, 28, 28)))))
    y.write_bytes(gzip.compress(idx_bytes(rng.integers(0, 10, labels))))
    return x, y


def test_sound_small_fashion_mnist_files_load(tmp_path):
    """The hand-made files of the fault tests below are valid as written."""
    write_fmnist(tmp_path)
    x, y = fashion_mnist.load("train", root=str(tmp_path))
    assert x.shape == (5, 1, 28, 28) and x.dtype == torch.uint8
    assert y.shape == (5,) and y.dtype == torch.int64


def test_a_truncated_gz_is_a_config_error_naming_it(tmp_path):
    x, _ = write_fmnist(tmp_path)
    data = x.read_bytes()
    x.write_bytes(data[: len(data) // 2])
    with pytest.raises(ConfigError, match=re.escape(f"cannot read {x} (Compressed file ended")
                       + ".*copy or install it again$"):
        fashion_mnist.load("train", root=str(tmp_path))


def test_a_truncated_raw_idx_file_is_a_config_error_naming_it(tmp_path):
    """Uncompressed and cut: the data is shorter than its header says."""
    x, y = write_fmnist(tmp_path)
    raw = gzip.decompress(x.read_bytes())
    x.unlink()
    plain = tmp_path / "train-images-idx3-ubyte"
    plain.write_bytes(raw[:-100])
    with pytest.raises(ConfigError, match=f"^{re.escape(str(plain))} holds 3820 bytes of data, "
                                          f"its header says 5x28x28: truncated"):
        fashion_mnist.load("train", root=str(tmp_path))


@pytest.mark.parametrize("content", [b"<html>404 Not Found</html>\n", b"\0\0\x08", b""])
def test_a_file_with_a_wrong_header_is_a_config_error_naming_it(tmp_path, content):
    """A web page saved in its place, a file cut inside its header, an empty one."""
    _, y = write_fmnist(tmp_path)
    y.write_bytes(gzip.compress(content))
    with pytest.raises(ConfigError,
                       match=f"^{re.escape(str(y))} is not an unsigned-byte IDX file$"):
        fashion_mnist.load("train", root=str(tmp_path))


def test_images_and_labels_of_different_counts_are_a_config_error(tmp_path):
    x, y = write_fmnist(tmp_path, images=5, labels=4)
    with pytest.raises(ConfigError, match=f"^{re.escape(f'{x} holds 5 images but {y} 4 labels')}$"):
        fashion_mnist.load("train", root=str(tmp_path))


def test_a_download_that_is_never_answered_fails_with_the_advice(tmp_path, monkeypatch):
    """No files and a network that swallows the request (a firewall dropping packets): the
    download gives up after its timeout and says how to install the data, never hangs."""
    from torchvision.datasets import FashionMNIST
    server = socket.create_server(("127.0.0.1", 0))  # takes the connection, never answers
    monkeypatch.setattr(FashionMNIST, "mirrors", [f"http://127.0.0.1:{server.getsockname()[1]}/"])
    monkeypatch.setattr(fashion_mnist, "DOWNLOAD_TIMEOUT_S", 0.5)
    monkeypatch.setattr(fashion_mnist, "DEBIAN_ROOT", str(tmp_path / "none"))
    monkeypatch.delenv("BUDGETVIT_FMNIST_DIR", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    start = time.monotonic()
    with server, pytest.raises(FileNotFoundError, match="could not be downloaded .*"
                                                        "apt-get install dataset-fashion-mnist$"):
        fashion_mnist.load("train")
    assert time.monotonic() - start < 20 and socket.getdefaulttimeout() is None


def test_the_folder_in_the_environment_variable_is_named_and_nothing_downloaded(tmp_path,
                                                                                  monkeypatch):
    monkeypatch.setenv("BUDGETVIT_FMNIST_DIR", str(tmp_path))
    monkeypatch.setattr(fashion_mnist, "_download", lambda split: pytest.fail("downloaded"))
    with pytest.raises(FileNotFoundError, match=re.escape(
            f"no Fashion-MNIST test files (t10k-images-idx3-ubyte[.gz]) in {tmp_path} "
            f"($BUDGETVIT_FMNIST_DIR)")):
        fashion_mnist.load("test")


def test_a_failed_download_is_one_line(tmp_path, monkeypatch):
    """torchvision's error names each mirror on lines of its own; the CLI's error is one."""
    def fail(split):
        raise RuntimeError("Error downloading x.gz:\nTried http://m/, got:\n<urlopen error>\n")
    monkeypatch.setattr(fashion_mnist, "_download", fail)
    monkeypatch.setattr(fashion_mnist, "DEBIAN_ROOT", str(tmp_path))
    monkeypatch.delenv("BUDGETVIT_FMNIST_DIR", raising=False)
    with pytest.raises(FileNotFoundError) as e:
        fashion_mnist.load("test")
    assert str(e.value) == (f"Fashion-MNIST not found in {tmp_path} and could not be downloaded "
                            f"(Error downloading x.gz: Tried http://m/, got: <urlopen error>); "
                            f"install it with: apt-get install dataset-fashion-mnist")
