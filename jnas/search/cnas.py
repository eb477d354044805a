"""CNAS (Weng, Zhou, Liu, Xia, "Automatic Convolutional Neural Architecture Search for Image
Classification Under Different Scenes", IEEE Access 7, 2019): DARTS on another op set.

The algorithm is first-order DARTS [tianbaochou/CNAS ``run/train_search.py``, ``darts/architecture.py``;
NAS-Benchmark ``CNAS/``]: mixed op o(x) = sum_o softmax(alpha^{(i,j)})_o o(x) on every edge; per
train batch, alpha <- Adam(grad_alpha L_val(w, alpha)) on a val batch (``--sec-approx`` would make
it second order: ``order='second'``), then w <- SGD(grad_w L_train(w, alpha)); no warm-up. What
changes against DARTS:

* the op set ``space.CNAS_PRIMITIVES``: none, skip_connect, cweight_com, avg_pool_3x3,
  max_pool_3x3, sep_conv_3x3, dil_conv_3x3, shuffle_conv_3x3 (no 5x5 convs; pools followed by an
  affine-free BN in the search, as DARTS), with the two new ops (``jnas.ops``):

    cweight_com(x)      = x * sigmoid(FC_{h->C}(ReLU(FC_{C->h}(GAP(x)))))  (h = max(C // 16, 1); FCs with bias);
                          at stride 2 then a depthwise 3x3 stride-2 conv and BN
    shuffle_conv_3x3(x) = ReLU(r(x) + sc(x)),
                          r = BN . gconv_{C/4->C} . BN . dw3x3_s . shuffle_4 . ReLU . BN . gconv_{C->C/4},
                          gconv: 1x1 convs in 4 groups; sc = identity, or AvgPool 3x3/2 at stride 2

  (so C must be a multiple of 16 where shuffle_conv_3x3 is searched);
* 6 intermediate nodes per cell: 27 edges, alphas (27, 8), each cell's output the concat of all 6
  nodes (6C channels); 6 cells, reductions at 2 and 4 ([n, n, r, n, r, n]);
* the search stem's BN has no affine parameters (``stem_affine=False``; DARTS's has);
* lr floor 0.003 instead of 0.001.

Derivation: the DARTS rule (top-2 edges by their strongest non-``none`` op, per node), concat
2..7 [CNAS ``Network.genotype``].

Defaults follow the authors' code (``train_search.py``): batch 32, 60 epochs, C=16, 6 cells, lr
0.025 cosine -> 0.003, momentum 0.9, wd 3e-4, clip 5; alpha Adam 3e-4, betas (0.5, 0.999), wd 1e-3;
no cutout; train portion 0.5. The NAS-Benchmark README command differs: ``--batch-size 64 --epochs
50 --cutout`` (``batch_size=64, epochs=50, cutout_length=16``); Yang et al. Table 2 lists batch 64
and 60 epochs. Warnings:

* nodes: the code's default is ``--num-meta-node 4`` and its README example passes 4; the
  NAS-Benchmark command and Yang et al. use 6, which is the default here (``steps=4``: the code's).
* the code calls ``scheduler.step()`` at the start of each epoch, which under PyTorch >= 1.1 runs
  epoch e at lr(e + 1) (``lr_shift=True``); the default, lr(e), is what it did under the PyTorch
  its README names (>= 0.4.1, i.e. before 1.1), as for the other methods here.
* for CIFAR-100 the code forces 50 epochs and C = 24, which cannot hold ``shuffle_conv_3x3``
  (C/4 = 6 channels in 4 groups: PyTorch's ``Conv2d`` rejects it as jnas does), so that branch
  cannot have run as written.
* the code's ``cweight_com`` hidden width ``C // 16`` is 0 for C < 16; jnas uses max(C // 16, 1).
* not offered: NAS-Benchmark's large-image search (``reduce_level 3``: an ImageNet-style stem,
  cutout 16 always); ``--use-sparse`` (affine BN and ``none`` in the derivation).

  method = METHODS['cnas'](CNASConfig(), steps_per_epoch=782).stage(0, None).method
"""

from __future__ import annotations

import dataclasses

from jnas import space
from jnas.search import base, darts
from jnas.search.registry import MethodSpec

__all__ = ["CNASConfig", "parts", "build", "SPEC"]


@dataclasses.dataclass(frozen=True)
class CNASConfig(base.SearchConfig):
  """CNAS settings (authors' code, except ``steps``: see the module docstring).

  stem_affine: affine parameters in the search stem's BN (CNAS: off; DARTS: on).
  """

  primitives: tuple[str, ...] = space.CNAS_PRIMITIVES
  steps: int = 6
  layers: int = 6
  epochs: int = 60
  batch_size: int = 32
  w_lr_min: float = 0.003
  order: str = "first"
  stem_affine: bool = False

  def __post_init__(self):
    super().__post_init__()
    if "shuffle_conv_3x3" in self.primitives and self.C % 16:
      raise ValueError(f"shuffle_conv_3x3 needs every cell's channels divisible by 16 (its 4-group convs map "
                       f"C -> C/4 -> C); C={self.C} is not (use C=16 or 32, or primitives without it)")


def parts(config: CNASConfig, steps_per_epoch: int) -> base.Parts:
  """DARTS's parts (softmax edges, DARTS derivation) on CNAS's supernet."""
  return darts.parts(config, steps_per_epoch)._replace(net=base.network(config, stem_affine=config.stem_affine))


def build(config: CNASConfig, steps_per_epoch: int) -> base.Search:
  return base.single_stage("cnas", config, base.compose(parts(config, steps_per_epoch), config, steps_per_epoch))


SPEC = MethodSpec(
    name="cnas", config=CNASConfig, build=build,
    paper="Weng, Zhou, Liu, Xia. Automatic Convolutional Neural Architecture Search for Image Classification "
          "Under Different Scenes. IEEE Access 2019",
    changes="DARTS first order on its own op set (SE cweight_com, ShuffleNet shuffle_conv_3x3, no 5x5), "
            "6 nodes per cell, 6 cells, lr floor 0.003",
    cpu={"C": 16})
