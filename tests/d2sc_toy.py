"""A tiny ZSLData with class structure for D2SC tests (random features; not a benchmark)."""

import numpy as np

from zsl.data.types import ZSLData


def toy_data(R=32, C=24, A=12, K=10, n_unseen=3, per_class=30, seed=0, second_view=True,
             protocol="validation", unit_emb=True) -> ZSLData:
    """Features x = minmax(a_y W + noise), c = minmax(a_y V + noise): learnable from the class embedding."""
    rng = np.random.default_rng(seed)
    emb = rng.normal(size=(K, A)).astype(np.float32)
    if unit_emb:
        emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    W, V = rng.normal(size=(A, R)), rng.normal(size=(A, C))
    seen, unseen = np.arange(K - n_unseen), np.arange(K - n_unseen, K)
    y_tr = np.repeat(seen, per_class)
    y_es, y_eu = np.repeat(seen, max(per_class // 3, 1)), np.repeat(unseen, max(per_class // 2, 1))

    def raw(y):
        return emb[y] @ W + 0.3 * rng.normal(size=(len(y), R)), emb[y] @ V + 0.3 * rng.normal(size=(len(y), C))

    (x_tr, c_tr), (x_es, c_es), (x_eu, c_eu) = raw(y_tr), raw(y_es), raw(y_eu)

    def scaler(fit):
        lo, span = fit.min(0), fit.max(0) - fit.min(0)
        return lambda v: ((v - lo) / span).astype(np.float32)

    sx, sc = scaler(x_tr), scaler(c_tr)
    view = (lambda v: sc(v)) if second_view else (lambda v: None)
    return ZSLData(
        name="toy", protocol=protocol, simulated=True, class_names=[f"c{k}" for k in range(K)],
        class_emb=emb, seen_classes=seen, unseen_classes=unseen,
        train_x=sx(x_tr), train_y=y_tr, eval_seen_x=sx(x_es), eval_seen_y=y_es,
        eval_unseen_x=sx(x_eu), eval_unseen_y=y_eu,
        train_c=view(c_tr), eval_seen_c=view(c_es), eval_unseen_c=view(c_eu),
    )
