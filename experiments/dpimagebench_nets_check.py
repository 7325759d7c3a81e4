"""Checks vpntk_jax.models.benchmark_nets against DPImageBench's own PyTorch modules:
the same weights give the same logits (eval mode, and train mode where no dropout).

Two halves, as torch is not a vpntk dependency:

  # in a venv with torch (DPImageBench installs 2.1.0), beside a DPImageBench checkout:
  python experiments/dpimagebench_nets_check.py torch DPIMAGEBENCH_DIR /tmp/nets.npz
  # in vpntk's venv:
  python -m experiments.dpimagebench_nets_check check /tmp/nets.npz

The torch half builds shallow versions of the three networks (the same code paths
as the 28 x 28 defaults: ResNet depth 8, WideResNet 10-2, ResNeXt 11 with cardinality
2 and widen factor 2; and the full-size ones' parameter counts), with random weights
and BatchNorm statistics, and stores weights, inputs and logits; the check half loads
the weights into the Flax modules in order and prints the largest logit differences
as JSON.
"""

from __future__ import annotations

import json
import sys

import numpy as np

# name -> (DPImageBench module file, class, shallow kwargs, our kwargs, train-mode check)
NETS = {
    "resnet": ("resnet", "ResNet", dict(depth=8), dict(depth=8), True),
    "wrn": ("wrn", "WideResNet", dict(depth=10, widen_factor=2, dropRate=0.3),
            dict(depth=10, widen_factor=2, dropout=0.3), False),
    "resnext": ("resnext", "ResNeXt", dict(depth=11, cardinality=2, widen_factor=2),
                dict(depth=11, cardinality=2, widen_factor=2), True),
}
SIZE, CHANNELS, CLASSES, BATCH = 8, 1, 4, 6


def torch_half(dpimagebench: str, out: str) -> None:
  import importlib  # pylint: disable=import-outside-toplevel
  import torch  # pylint: disable=import-outside-toplevel
  sys.path.insert(0, f"{dpimagebench}/evaluation/classifier")
  torch.manual_seed(0)
  x = torch.rand(BATCH, CHANNELS, SIZE, SIZE)
  arrays = {"x": x.numpy().transpose(0, 2, 3, 1)}
  for name, (module, cls, shallow, _, train_check) in NETS.items():
    net_cls = getattr(importlib.import_module(module), cls)
    full = net_cls(in_c=1, img_size=28, num_classes=10,
                   **({"dropRate": 0.3} if name != "resnet" else {}))
    arrays[f"{name}/full_params"] = np.asarray(sum(p.numel() for p in full.parameters()))
    net = net_cls(in_c=CHANNELS, img_size=SIZE, num_classes=CLASSES, **shallow)
    with torch.no_grad():
      for key, value in net.state_dict().items():
        if key.endswith("running_mean") or key.endswith("bias"):
          value.copy_(torch.randn_like(value) * 0.1)
        elif key.endswith("running_var"):
          value.copy_(torch.rand_like(value) + 0.5)
        elif key.endswith("weight") and value.ndim == 1:  # BatchNorm scale
          value.copy_(torch.rand_like(value) + 0.5)
    for i, (key, value) in enumerate(net.state_dict().items()):
      if not key.endswith("num_batches_tracked"):
        arrays[f"{name}/{i:04d}/{key}"] = value.numpy().copy()  # train mode updates it
    net.eval()
    with torch.no_grad():
      arrays[f"{name}/eval"] = net(x).numpy()
      if train_check:
        net.train()
        arrays[f"{name}/train"] = net(x).numpy()
  np.savez(out, **arrays)
  print(f"wrote {out} (torch {torch.__version__})")


def _load(name: str, stored: dict, variables: dict) -> dict:
  """Our variables with DPImageBench's weights, layer by layer in creation order."""
  import flax  # pylint: disable=import-outside-toplevel
  keys = sorted(k for k in stored if k.startswith(f"{name}/0"))
  layers = {}
  for key in keys:  # group by torch module, in state_dict order
    module, _, leaf = key.split("/", 2)[2].rpartition(".")
    layers.setdefault(module, {})[leaf] = stored[key]
  torch_layers = list(layers.values())
  params = flax.traverse_util.flatten_dict(variables["params"])
  stats = flax.traverse_util.flatten_dict(variables["batch_stats"])
  ours = list(dict.fromkeys(path[:-1] for path in params))
  if len(ours) != len(torch_layers):
    raise AssertionError(f"{name}: {len(ours)} layers here, {len(torch_layers)} in torch")
  for path, layer in zip(ours, torch_layers):
    kind = path[-1].split("_")[0]
    if kind == "Conv":
      params[path + ("kernel",)] = layer["weight"].transpose(2, 3, 1, 0)
    elif kind == "Dense":
      params[path + ("kernel",)] = layer["weight"].T
      params[path + ("bias",)] = layer["bias"]
    elif kind == "BatchNorm":
      params[path + ("scale",)], params[path + ("bias",)] = layer["weight"], layer["bias"]
      stats[path + ("mean",)], stats[path + ("var",)] = layer["running_mean"], layer["running_var"]
    else:
      raise AssertionError(f"unexpected layer {path}")
  return {"params": flax.traverse_util.unflatten_dict(params),
          "batch_stats": flax.traverse_util.unflatten_dict(stats)}


def check_half(path: str) -> dict:
  import jax  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  from vpntk_jax.models import benchmark_nets  # pylint: disable=import-outside-toplevel
  with np.load(path) as z:
    stored = dict(z)
  x = jnp.asarray(stored["x"])
  result = {}
  for name, (_, _, _, ours, train_check) in NETS.items():
    net = benchmark_nets.NETWORKS[name](num_classes=CLASSES, **ours)
    variables = _load(name, stored, net.init(jax.random.key(0), x, train=False))
    full = benchmark_nets.NETWORKS[name](num_classes=10)
    shapes = jax.eval_shape(lambda full=full: full.init(jax.random.key(0),
                                                        jnp.zeros((1, 28, 28, 1))))
    count = sum(int(np.prod(p.shape)) for p in jax.tree_util.tree_leaves(shapes["params"]))
    row = {"full_params": count, "torch_full_params": int(stored[f"{name}/full_params"]),
           "eval_max_abs_diff": float(np.abs(np.asarray(net.apply(variables, x, train=False))
                                             - stored[f"{name}/eval"]).max()),
           "logit_scale": float(np.abs(stored[f"{name}/eval"]).max())}
    if train_check:
      logits, _ = net.apply(variables, x, train=True, mutable=["batch_stats"])
      row["train_max_abs_diff"] = float(np.abs(np.asarray(logits) - stored[f"{name}/train"]).max())
    result[name] = row
  return result


if __name__ == "__main__":
  if sys.argv[1:2] == ["torch"] and len(sys.argv) == 4:
    torch_half(sys.argv[2], sys.argv[3])
  elif sys.argv[1:2] == ["check"] and len(sys.argv) == 3:
    print(json.dumps(check_half(sys.argv[2]), indent=2))
  else:
    sys.exit(__doc__)
