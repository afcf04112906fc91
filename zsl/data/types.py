"""The typed dataset object every model receives (the data side of the zsl/hpo seam)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class ZSLData:
    """One dataset, already split by a protocol and scaled (features fitted on training rows only).

    Class ids are *global positions* 0..K-1 into ``class_names`` / ``class_emb`` (the column
    order of the xlsa17 semantic file).  Shapes: N_* images, R feature dim, C second-view dim,
    A class-embedding dim, K classes.

    ``eval_seen_*`` / ``eval_unseen_*`` are the sets a model is scored on: under the
    ``validation`` protocol they are carved from trainval only (no test image is ever present);
    under ``final`` / ``reference`` they are xlsa17 test_seen / test_unseen.
    """

    name: str                      # e.g. "AWA2" or "sim-AWA2"
    protocol: str                  # "validation" | "final" | "reference"
    simulated: bool                # True for the simulated benchmarks; printed wherever numbers appear
    class_names: list[str]         # [K]
    class_emb: np.ndarray          # [K, A] float32, the class semantics in use (att / normalised original_att / sent)
    seen_classes: np.ndarray       # [Ns] int64 global ids
    unseen_classes: np.ndarray     # [Nu] int64 global ids, disjoint from seen_classes
    train_x: np.ndarray            # [N_tr, R] float32 visual features
    train_y: np.ndarray            # [N_tr] int64 global ids (all in seen_classes)
    eval_seen_x: np.ndarray        # [N_es, R]
    eval_seen_y: np.ndarray        # [N_es] int64 (seen classes)
    eval_unseen_x: np.ndarray      # [N_eu, R]
    eval_unseen_y: np.ndarray      # [N_eu] int64 (unseen classes)
    train_c: np.ndarray | None = None        # [N_tr, C] second feature view (con_paco), optional
    eval_seen_c: np.ndarray | None = None    # [N_es, C]
    eval_unseen_c: np.ndarray | None = None  # [N_eu, C]
    info: dict = field(default_factory=dict) # provenance: source files, seed, scale, split sizes, ...

    @property
    def n_classes(self) -> int:
        return len(self.class_names)

    @property
    def feature_dim(self) -> int:
        return int(self.train_x.shape[1])

    @property
    def second_view_dim(self) -> int | None:
        return None if self.train_c is None else int(self.train_c.shape[1])

    @property
    def emb_dim(self) -> int:
        return int(self.class_emb.shape[1])

    @property
    def has_second_view(self) -> bool:
        return self.train_c is not None

    def provenance(self) -> dict:
        """What a number computed on this data rests on: protocol, real/simulated, the features (pooled, or e.g.
        SOVR-refined region features), their file and dimension,
        second view, class embedding and its dimension, data seed and split percent."""
        sources = self.info.get("sources", {})
        base = lambda key: sources[key].replace("\\", "/").rsplit("/", 1)[-1] if key in sources else None  # noqa: E731
        return {"dataset": self.name, "protocol": self.protocol, "data": "simulated" if self.simulated else "real",
                "features": self.info.get("features") or "pooled", "feature_file": base("x"),
                "feature_dim": self.feature_dim,
                "second_view_file": base("c"), "second_view_dim": self.second_view_dim,
                "class_embedding": self.info.get("class_embedding"), "class_embedding_dim": self.emb_dim,
                "data_seed": self.info.get("seed"), "split_percent": self.info.get("split_percent")}

    @property
    def label(self) -> str:
        """Human label used in every printed summary, e.g. 'sim-AWA2 (simulated, validation protocol)'."""
        kind = "simulated" if self.simulated else "real features"
        return f"{self.name} ({kind}, {self.protocol} protocol)"
