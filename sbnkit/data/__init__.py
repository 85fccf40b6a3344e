"""Data sets as in-memory tensors, their on-disk lookup, a validation split and a batch iterator.

Registered data sets (:func:`names`): ``fashion_mnist``, ``mnist`` (IDX files, gzipped or raw),
``cifar10``, ``cifar100`` (the binary or the python distribution) and ``toy2d`` (generated: the
toy set of Shekhovtsov, Yanush & Flach 2020, §5).

Where the files are looked for, in order (the first folder that holds all files of the split wins):

1. ``root`` if given (``[data] root`` in a config): that folder, then ``root/<folder>``, and
   nothing else;
2. ``$SBNKIT_DATA/<folder>``, and for Fashion-MNIST and CIFAR-10 also ``$SBNKIT_DATA`` itself
   (a ``$SBNKIT_DATA`` that is not a folder is an error, never skipped);
3. ``/usr/share/datasets/<folder>`` (Debian's ``dataset-fashion-mnist`` installs here);
4. ``~/.cache/sbnkit/<folder>``.

``<folder>`` is ``fashion-mnist``, ``mnist``, ``cifar-10-batches-bin`` or ``cifar-100-binary``.
CIFAR comes in two distributions: in each place above the binary one is looked for first
(``cifar-10-batches-bin``, ``cifar-100-binary``), then the python one (``cifar-10-batches-py``:
``data_batch_1`` … ``data_batch_5``, ``test_batch``; ``cifar-100-python``: ``train``, ``test``),
read by a restricted unpickler (:mod:`.cifar_python`), and last the python distribution's archive
itself, ``cifar-10-python.tar.gz`` / ``cifar-100-python.tar.gz``, directly in that place (read in
memory, never extracted).
IDX names are those of the original distribution (``train-images-idx3-ubyte[.gz]``,
``train-labels-idx1-ubyte[.gz]``, ``t10k-...``). MNIST and Fashion-MNIST share these names, so only
Fashion-MNIST, the default, may sit directly in ``$SBNKIT_DATA``.

Images come as float32 ``[N, C, H, W]``: pixels scaled to ``[0, 1]``, then standardised with fixed
per-data-set (per-channel) mean and std constants unless ``standardize=False``. Labels are int64.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, get_args

import numpy as np
import torch

from ..errors import UserError
from .augment import AUGMENTS, Augment, augmenter
from .cifar import read_cifar_bin
from .cifar_python import read_cifar_python, read_cifar_python_archive
from .idx import read_idx
from .toy import make_toy

Split = Literal["train", "test"]
SPLITS: tuple[str, ...] = get_args(Split)
DEFAULT_ROOTS: tuple[Path, ...] = (Path("/usr/share/datasets"), Path("~/.cache/sbnkit"))


@dataclass(frozen=True)
class Dataset:
    """A registered data set: where its files live, its shape and normalisation constants."""

    name: str
    title: str
    input_shape: tuple[int, ...]
    num_classes: int
    mean: tuple[float, ...] = (0.0,)
    std: tuple[float, ...] = (1.0,)
    folder: str = ""
    files: dict[str, tuple[str, ...]] = field(default_factory=dict)
    flat_ok: bool = False
    hint: str = ""
    python_folder: str = ""
    python_files: dict[str, tuple[str, ...]] = field(default_factory=dict)
    python_archive: str = ""

    def layouts(self) -> list[tuple[str, dict[str, tuple[str, ...]]]]:
        """``(folder, files)`` of each distribution, in lookup order: binary, python, then the
        python archive (folder ``""``: the archive lies in the place itself)."""
        if not self.python_folder:
            return [(self.folder, self.files)]
        archive = {split: (self.python_archive,) for split in SPLITS}
        return [(self.folder, self.files), (self.python_folder, self.python_files), ("", archive)]


def _idx_files(prefix: str) -> tuple[str, str]:
    return (f"{prefix}-images-idx3-ubyte", f"{prefix}-labels-idx1-ubyte")


_IDX_SPLITS = {"train": _idx_files("train"), "test": _idx_files("t10k")}

DATASETS: dict[str, Dataset] = {
    d.name: d
    for d in (
        Dataset(
            "fashion_mnist",
            "Fashion-MNIST",
            (1, 28, 28),
            10,
            (0.2860,),
            (0.3530,),
            "fashion-mnist",
            _IDX_SPLITS,
            flat_ok=True,
            hint="install it with `apt-get install dataset-fashion-mnist`, or set SBNKIT_DATA to "
            "a folder holding train-images-idx3-ubyte.gz and the three other IDX files",
        ),
        Dataset(
            "mnist",
            "MNIST",
            (1, 28, 28),
            10,
            (0.1307,),
            (0.3081,),
            "mnist",
            _IDX_SPLITS,
            hint="put the four IDX files (train-images-idx3-ubyte.gz, ...) in $SBNKIT_DATA/mnist",
        ),
        Dataset(
            "cifar10",
            "CIFAR-10",
            (3, 32, 32),
            10,
            (0.4914, 0.4822, 0.4465),
            (0.2470, 0.2435, 0.2616),
            "cifar-10-batches-bin",
            {
                "train": tuple(f"data_batch_{i}.bin" for i in range(1, 6)),
                "test": ("test_batch.bin",),
            },
            flat_ok=True,
            hint="put cifar-10-python.tar.gz (as downloaded, or unpacked) or the unpacked "
            "cifar-10-binary.tar.gz into $SBNKIT_DATA",
            python_folder="cifar-10-batches-py",
            python_archive="cifar-10-python.tar.gz",
            python_files={
                "train": tuple(f"data_batch_{i}" for i in range(1, 6)),
                "test": ("test_batch",),
            },
        ),
        Dataset(
            "cifar100",
            "CIFAR-100",
            (3, 32, 32),
            100,
            (0.5071, 0.4865, 0.4409),
            (0.2673, 0.2564, 0.2762),
            "cifar-100-binary",
            {"train": ("train.bin",), "test": ("test.bin",)},
            hint="put cifar-100-python.tar.gz (as downloaded, or unpacked) or the unpacked "
            "cifar-100-binary.tar.gz into $SBNKIT_DATA",
            python_folder="cifar-100-python",
            python_archive="cifar-100-python.tar.gz",
            python_files={"train": ("train",), "test": ("test",)},
        ),
        Dataset("toy2d", "the 2-D toy set", (2,), 2),
    )
}


def names() -> list[str]:
    """The registered data set names."""
    return sorted(DATASETS)


def get(name: str) -> Dataset:
    """The registered data set ``name``. Raises :class:`UserError` for an unknown name."""
    if name not in DATASETS:
        raise UserError(f"unknown data set {name!r}; known data sets: {', '.join(names())}")
    return DATASETS[name]


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise UserError(f"unknown split {split!r}; known splits: {', '.join(SPLITS)}")


def _resolve(folder: Path, name: str) -> Path | None:
    for candidate in (folder / f"{name}.gz", folder / name):
        if candidate.is_file():
            return candidate
    return None


def candidate_folders(
    ds: Dataset, root: str | os.PathLike | None = None, folder: str | None = None
) -> list[Path]:
    """The folders searched for ``ds``, in order (see the module docstring); ``folder``: the
    folder name of one distribution (default ``ds.folder``). Raises :class:`UserError` when
    ``$SBNKIT_DATA`` is set but not a folder."""
    name = ds.folder if folder is None else folder
    if root:
        return [Path(root).expanduser(), Path(root).expanduser() / name]
    folders = []
    env = os.environ.get("SBNKIT_DATA")
    if env and not Path(env).expanduser().is_dir():
        raise UserError(
            f"SBNKIT_DATA={env} is not a folder; point it at the folder that holds the data "
            "files, or unset it to use the default locations"
        )
    if env:
        folders.append(Path(env).expanduser() / name)
        if ds.flat_ok:
            folders.append(Path(env).expanduser())
    folders += [r.expanduser() / name for r in DEFAULT_ROOTS]
    return folders


def find_files(
    name: str, split: Split = "train", root: str | os.PathLike | None = None
) -> list[Path]:
    """Paths of the files of ``split`` of data set ``name`` from the first folder holding all.

    Raises :class:`UserError` for an unknown data set or split, or when no folder holds them
    all.
    """
    return _find(get(name), split, root)[0]


def _find(ds: Dataset, split: str, root: str | os.PathLike | None) -> tuple[list[Path], int]:
    """The paths of ``split`` and the index of the distribution (:meth:`Dataset.layouts`)."""
    _check_split(split)
    if not ds.files:
        return [], 0
    layouts = ds.layouts()
    places = zip(*(candidate_folders(ds, root, folder) for folder, _ in layouts), strict=True)
    searched = []
    for folders in places:
        for k, (folder, (_, files)) in enumerate(zip(folders, layouts, strict=True)):
            paths = [_resolve(folder, f) for f in files[split]]
            if all(p is not None for p in paths):
                return paths, k  # type: ignore[return-value]
            searched.append(folder)
    where = ", ".join(dict.fromkeys(str(f) for f in searched))
    raise UserError(f"{ds.title} {split} files not found (looked in {where}); {ds.hint}")


def _read_idx_pair(ds: Dataset, images: Path, labels: Path) -> tuple[np.ndarray, np.ndarray]:
    x = read_idx(images, ndim=3)
    y = read_idx(labels, ndim=1)
    if tuple(x.shape[1:]) != ds.input_shape[1:] or x.dtype != np.uint8:
        raise UserError(
            f"corrupt data file {images}: {x.dtype} images of shape {list(x.shape[1:])}, "
            f"expected uint8 {list(ds.input_shape[1:])}; re-install or re-download it"
        )
    if y.shape[0] != x.shape[0]:
        raise UserError(
            f"corrupt data files: {x.shape[0]} images in {images} but {y.shape[0]} labels in "
            f"{labels}; re-install or re-download them"
        )
    y = y.astype(np.int64)
    if y.size and (int(y.min()) < 0 or int(y.max()) >= ds.num_classes):
        raise UserError(
            f"corrupt data file {labels}: labels must lie in [0, {ds.num_classes}), got range "
            f"[{int(y.min())}, {int(y.max())}]; re-install or re-download it"
        )
    return x[:, None], y


def load(
    name: str,
    split: Split = "train",
    root: str | os.PathLike | None = None,
    standardize: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(x float32 [N, *input_shape], y int64 [N])`` of ``split`` (``train`` or ``test``).
    Raises :class:`UserError` for an unknown data set or split, missing files, or files that
    cannot be read or are corrupt."""
    ds = get(name)
    _check_split(split)
    if name == "toy2d":
        x, signs = make_toy(100, seed=1 if split == "train" else 2, dtype=torch.float32)
        y = (signs > 0).long()
        return x, y
    paths, layout = _find(ds, split, root)
    try:
        if ds.folder.startswith("cifar"):
            if layout == 2:
                members = [f"{ds.python_folder}/{f}" for f in ds.python_files[split]]
                parts = [read_cifar_python_archive(paths[0], members, ds.num_classes)]
            else:
                parts = [
                    read_cifar_python(p, ds.num_classes)
                    if layout == 1
                    else read_cifar_bin(p, 1 if ds.num_classes == 10 else 2, ds.num_classes)
                    for p in paths
                ]
            images = np.concatenate([p[0] for p in parts])
            labels = np.concatenate([p[1] for p in parts])
        else:
            images, labels = _read_idx_pair(ds, *paths)
    except OSError as exc:
        raise UserError(
            f"cannot read {ds.title} from {paths[0].parent}: {exc.strerror or exc}"
        ) from None
    x = torch.from_numpy(images.astype(np.float32)).div_(255.0)
    if standardize:
        shape = (1, -1) + (1,) * (x.dim() - 2)
        mean = torch.tensor(ds.mean).view(shape)
        std = torch.tensor(ds.std).view(shape)
        x.sub_(mean).div_(std)
    return x, torch.from_numpy(labels)


def split_validation(
    x: torch.Tensor, y: torch.Tensor, fraction: float, seed: int = 0
) -> tuple[tuple[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
    """A seeded random ``(train, validation)`` split with ``round(fraction · N)`` held out.
    Raises :class:`UserError` for a ``fraction`` outside ``[0, 1)``."""
    if not 0.0 <= fraction < 1.0:
        raise UserError(f"validation fraction must lie in [0, 1), got {fraction!r}")
    n_val = round(fraction * x.shape[0])
    perm = torch.randperm(x.shape[0], generator=torch.Generator().manual_seed(seed))
    val, train = perm[:n_val], perm[n_val:]
    return (x[train], y[train]), (x[val], y[val])


class Batches:
    """Mini-batches ``(x, y)`` of in-memory tensors, reshuffled with ``randperm`` on every pass.

    ``drop_last`` drops a final partial batch (unless it would be the only one); ``transform``
    (e.g. an augmentation) is applied to each input batch. Raises :class:`UserError` for a
    non-positive ``batch_size`` or a label count that differs from the input count.
    """

    def __init__(
        self,
        x: torch.Tensor,
        y: torch.Tensor,
        batch_size: int,
        shuffle: bool = False,
        generator: torch.Generator | None = None,
        drop_last: bool = False,
        transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ) -> None:
        if batch_size < 1:
            raise UserError(f"batch size must be a positive integer, got {batch_size!r}")
        if x.shape[0] != y.shape[0]:
            raise UserError(f"{x.shape[0]} inputs but {y.shape[0]} labels")
        self.x, self.y, self.batch_size = x, y, batch_size
        self.shuffle, self.generator, self.drop_last = shuffle, generator, drop_last
        self.transform = transform

    def __len__(self) -> int:
        n, b = self.x.shape[0], self.batch_size
        return max(1, n // b) if self.drop_last and n else -(-n // b)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        return self.starting_at(0)

    def starting_at(self, start: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """The pass's batches from batch ``start`` on: the order is drawn as for a whole pass,
        the first ``start`` batches are skipped without transforming them."""
        n, b = self.x.shape[0], self.batch_size
        order = (
            torch.randperm(n, generator=self.generator, device=self.x.device)
            if self.shuffle
            else None
        )
        for k in range(start, len(self)):
            stop = min((k + 1) * b, n)
            if order is None:
                xb, yb = self.x[k * b : stop], self.y[k * b : stop]
            else:
                idx = order[k * b : stop]
                xb, yb = self.x[idx], self.y[idx]
            yield (self.transform(xb) if self.transform is not None else xb), yb


__all__ = [
    "AUGMENTS",
    "DATASETS",
    "SPLITS",
    "Augment",
    "Batches",
    "Dataset",
    "Split",
    "augmenter",
    "candidate_folders",
    "find_files",
    "get",
    "load",
    "names",
    "read_cifar_bin",
    "read_cifar_python",
    "read_idx",
    "split_validation",
    "make_toy",
]
