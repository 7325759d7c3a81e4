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
    from vpntk_jax.training import dp_sgd
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
