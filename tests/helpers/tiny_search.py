"""The tiny search both subprocess helpers run (their results are compared with each other)."""

import jnas.data as D
from jnas.search import METHODS

OPS = ("none", "skip_connect", "sep_conv_3x3", "max_pool_3x3")
# SGD on the alphas: Adam's normalised steps would turn last-bit differences of near-zero alpha
# gradients (XLA compiles a per-device batch of 1 seed differently from a batch of 2) into +-lr moves
CFG = METHODS["darts"].config(order="first", conv_impl="xla", C=4, layers=3, steps=1, primitives=OPS, batch_size=8,
                              epochs=2, a_optimizer="sgd", a_lr=0.05)


def data():
  """(dataset, weights split, architecture split): 32 + 32 digits of 8x8."""
  ds = D.load_digits(size=8, channels=3)
  w, a = D.search_split(ds.train, seed=0)
  return ds, D.Split(w.images[:32], w.labels[:32]), D.Split(a.images[:32], a.labels[:32])
