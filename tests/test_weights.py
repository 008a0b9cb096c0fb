"""torchvision state dicts <-> flax ResNet variables, weight files, and the orbax form (supersub_jax.weights).

The reference is torchvision itself: tests/fixtures/torchvision_{basic,bottleneck}.* were written by
scripts/torchvision_reference.py with torchvision's own ResNet modules (narrowed to 8 base channels; random weights
and BatchNorm statistics) and hold its state dict, an input and its eval-mode logits. No torch is needed here.
"""

import os

import jax
import numpy as np
import pytest

from supersub_jax import checkpoint as ckpt
from supersub_jax import models
from supersub_jax import weights

FIXTURES = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'fixtures')
# (fixture, our architecture at 1/8 width): torchvision's ResNet-18 and ResNet-50 layouts.
REFERENCES = [('basic', 'resnet18'), ('bottleneck', 'resnet50')]


def _reference(name):
  state_dict = weights.read_state_dict(os.path.join(FIXTURES, f'torchvision_{name}.safetensors'))
  with np.load(os.path.join(FIXTURES, f'torchvision_{name}.npz')) as data:
    return state_dict, data['input_nchw'], data['logits']


def _logits(model, variables, images_nchw):
  return np.asarray(model.apply(variables, images_nchw.transpose(0, 2, 3, 1), train=False))


@pytest.mark.parametrize('name,arch', REFERENCES)
def test_flax_reproduces_torchvision_logits_within_1e4_relative(name, arch):
  state_dict, images, reference = _reference(name)
  model = models.create_model(arch, 10, stem='imagenet', width=0.125)
  logits = _logits(model, weights.from_torchvision(state_dict, model), images)
  assert np.abs(logits - reference).max() / np.abs(reference).max() < 1e-4


@pytest.mark.parametrize('name,arch', REFERENCES)
def test_export_gives_back_torchvision_state_dict_exactly(name, arch):
  state_dict, _, _ = _reference(name)
  model = models.create_model(arch, 10, stem='imagenet', width=0.125)
  back = weights.to_torchvision(weights.from_torchvision(state_dict, model))
  assert sorted(back) == sorted(state_dict)  # num_batches_tracked included: load_state_dict(strict=True) takes it
  for key, value in state_dict.items():
    assert back[key].dtype == value.dtype and back[key].shape == value.shape, key
    if not key.endswith('num_batches_tracked'):
      np.testing.assert_array_equal(back[key], value, err_msg=key)


def _torchvision_resnet18_state_dict(rng, num_classes=1000):
  """A state dict with torchvision's resnet18 names and layouts, written from torchvision's naming scheme."""
  sd = {}

  def bn(prefix, c):
    sd.update({f'{prefix}.weight': rng.normal(size=c), f'{prefix}.bias': rng.normal(size=c),
               f'{prefix}.running_mean': rng.normal(size=c), f'{prefix}.running_var': rng.uniform(0.5, 2, size=c),
               f'{prefix}.num_batches_tracked': np.array(7, np.int64)})

  sd['conv1.weight'] = rng.normal(size=(64, 3, 7, 7))
  bn('bn1', 64)
  cin = 64
  for i, c in enumerate((64, 128, 256, 512), start=1):
    for j in range(2):
      p = f'layer{i}.{j}'
      sd[f'{p}.conv1.weight'] = rng.normal(size=(c, cin if j == 0 else c, 3, 3))
      bn(f'{p}.bn1', c)
      sd[f'{p}.conv2.weight'] = rng.normal(size=(c, c, 3, 3))
      bn(f'{p}.bn2', c)
      if j == 0 and i > 1:
        sd[f'{p}.downsample.0.weight'] = rng.normal(size=(c, cin, 1, 1))
        bn(f'{p}.downsample.1', c)
    cin = c
  sd['fc.weight'] = rng.normal(size=(num_classes, 512))
  sd['fc.bias'] = rng.normal(size=num_classes)
  return {k: v.astype(np.float32) if v.dtype == np.float64 else v for k, v in sd.items()}


def test_hand_built_resnet18_state_dict_lands_in_the_right_leaves():
  sd = _torchvision_resnet18_state_dict(np.random.default_rng(0))
  assert len(sd) == 122  # torchvision.models.resnet18().state_dict() has 122 entries, 20 of them num_batches_tracked
  v = weights.from_torchvision(sd, models.create_model('resnet18', 1000))
  params, stats = v['params'], v['batch_stats']
  # Conv kernels: torch [O, I, kh, kw] -> flax [kh, kw, I, O].
  assert params['conv_init']['kernel'][1, 6, 2, 5] == sd['conv1.weight'][5, 2, 1, 6]
  assert params['stage2_block1']['conv_proj']['kernel'][0, 0, 63, 127] == sd['layer2.0.downsample.0.weight'][127, 63,
                                                                                                               0, 0]
  np.testing.assert_array_equal(params['stage4_block2']['Conv_1']['kernel'],
                                sd['layer4.1.conv2.weight'].transpose(2, 3, 1, 0))
  # BatchNorm: weight/bias are params scale/bias; running statistics are batch_stats mean/var.
  np.testing.assert_array_equal(params['bn_init']['scale'], sd['bn1.weight'])
  np.testing.assert_array_equal(stats['bn_init']['mean'], sd['bn1.running_mean'])
  np.testing.assert_array_equal(stats['stage1_block2']['BatchNorm_1']['var'], sd['layer1.1.bn2.running_var'])
  np.testing.assert_array_equal(stats['stage3_block1']['norm_proj']['mean'], sd['layer3.0.downsample.1.running_mean'])
  np.testing.assert_array_equal(params['stage3_block1']['norm_proj']['bias'], sd['layer3.0.downsample.1.bias'])
  # The fc head: torch Linear [classes, features] -> flax Dense [features, classes].
  assert params['head']['kernel'][100, 3] == sd['fc.weight'][3, 100]
  np.testing.assert_array_equal(params['head']['bias'], sd['fc.bias'])
  assert models.param_count(params) == 11_689_512  # torchvision's resnet18


def test_backbone_only_ignores_the_fc_head_of_another_size():
  sd = _torchvision_resnet18_state_dict(np.random.default_rng(1), num_classes=1000)
  v = weights.from_torchvision(sd, models.create_model('resnet18', 7), head=False)
  assert 'head' not in v['params']
  with pytest.raises(weights.WeightsMismatchError, match=r'fc.weight: file \(1000, 512\), model needs \(7, 512\)'):
    weights.from_torchvision(sd, models.create_model('resnet18', 7))


def test_missing_unexpected_and_misshaped_keys_are_listed_together():
  sd = _torchvision_resnet18_state_dict(np.random.default_rng(2))
  del sd['layer1.0.conv1.weight']
  sd['layer5.0.conv1.weight'] = np.zeros((1,), np.float32)
  sd['layer2.1.bn1.running_var'] = np.zeros((3,), np.float32)
  with pytest.raises(weights.WeightsMismatchError) as info:
    weights.from_torchvision(sd, models.create_model('resnet18', 1000))
  message = str(info.value)
  assert '1 missing, 1 unexpected, 1 wrong shape' in message
  assert 'missing: layer1.0.conv1.weight' in message
  assert 'unexpected: layer5.0.conv1.weight' in message
  assert 'wrong shape: layer2.1.bn1.running_var: file (3,), model needs (128,)' in message


def test_small_stem_is_told_to_use_the_imagenet_stem():
  sd = _torchvision_resnet18_state_dict(np.random.default_rng(3))
  with pytest.raises(weights.WeightsMismatchError, match='stem="imagenet"'):
    weights.from_torchvision(sd, models.create_model('resnet18', 1000, stem='small'))


@pytest.mark.parametrize('suffix', ['.safetensors', '.npz'])
def test_state_dict_files_round_trip(tmp_path, suffix):
  sd = _torchvision_resnet18_state_dict(np.random.default_rng(4), num_classes=5)
  path = str(tmp_path / f'w{suffix}')
  weights.write_state_dict(path, sd)
  back = weights.read_state_dict(path)
  assert sorted(back) == sorted(sd)
  for k in sd:
    np.testing.assert_array_equal(back[k], sd[k])
    assert back[k].dtype == sd[k].dtype
  assert os.listdir(tmp_path) == [f'w{suffix}']  # no temporary file left


def test_data_parallel_prefix_is_stripped(tmp_path):
  sd = _torchvision_resnet18_state_dict(np.random.default_rng(5), num_classes=5)
  path = str(tmp_path / 'ddp.npz')
  np.savez(path, **{f'module.{k}': v for k, v in sd.items()})
  assert sorted(weights.read_state_dict(path)) == sorted(sd)


def test_bad_files_get_one_clear_error(tmp_path):
  with pytest.raises(FileNotFoundError, match='does not exist'):
    weights.read_state_dict(str(tmp_path / 'absent.safetensors'))
  for name in ('garbage.safetensors', 'garbage.npz'):
    (tmp_path / name).write_bytes(b'\x00not a weights file' * 10)
    with pytest.raises(ValueError, match=f'{name} is not a readable'):
      weights.read_state_dict(str(tmp_path / name))
  (tmp_path / 'weights.h5').write_bytes(b'x')
  with pytest.raises(ValueError, match=r"unknown weights file type '.h5'; use one of"):
    weights.read_state_dict(str(tmp_path / 'weights.h5'))


def test_pth_needs_torch_or_names_the_conversion(tmp_path):
  path = tmp_path / 'resnet.pth'
  path.write_bytes(b'PK')
  try:
    import torch  # pylint: disable=g-import-not-at-top,unused-import
  except ImportError:
    with pytest.raises(ValueError, match='needs torch .* safetensors'):
      weights.read_state_dict(str(path))
  else:
    with pytest.raises(ValueError, match='not a readable weights-only torch file'):
      weights.read_state_dict(str(path))


def test_pth_is_read_weights_only(tmp_path):
  torch = pytest.importorskip('torch', reason='torch is optional; the .pth path runs where it is installed')
  sd = _torchvision_resnet18_state_dict(np.random.default_rng(6), num_classes=5)
  torch.save({'state_dict': {k: torch.from_numpy(v) for k, v in sd.items()}}, tmp_path / 'ok.pth')
  back = weights.read_state_dict(str(tmp_path / 'ok.pth'))
  np.testing.assert_array_equal(back['fc.weight'], sd['fc.weight'])

  class Payload:  # unpickling this would run code
    def __reduce__(self):
      return (os.system, ('touch ' + str(tmp_path / 'pwned'),))

  torch.save({'conv1.weight': Payload()}, tmp_path / 'evil.pth', _use_new_zipfile_serialization=True)
  with pytest.raises(ValueError, match='not a readable weights-only torch file'):
    weights.read_state_dict(str(tmp_path / 'evil.pth'))
  assert not (tmp_path / 'pwned').exists()


def test_orbax_round_trip_and_backbone(tmp_path):
  model = models.create_model('resnet_tiny', 4, stem='imagenet')
  variables = jax.device_get(models.init_variables(model, jax.random.key(0), (32, 32, 3)))
  directory = str(tmp_path / 'net')
  weights.save_orbax(directory, variables, weights.model_meta(model, 'resnet_tiny', 1.0))
  back, meta = weights.load_orbax(directory)
  assert meta['arch'] == 'resnet_tiny' and meta['num_classes'] == 4 and meta['stem'] == 'imagenet'
  for a, b in zip(jax.tree.leaves(variables), jax.tree.leaves(back)):
    np.testing.assert_array_equal(a, b)
  with pytest.raises(FileExistsError, match='already exists'):
    weights.save_orbax(directory, variables, {})
  # As config.init: any head size, the backbone is checked leaf by leaf.
  backbone = weights.load_backbone(directory, 'orbax', models.create_model('resnet_tiny', 9, stem='imagenet'))
  assert 'head' not in backbone['params']
  with pytest.raises(ckpt.CheckpointMismatchError, match='conv_init/kernel'):
    weights.load_backbone(directory, 'orbax', models.create_model('resnet_tiny', 4, stem='small'))
  with pytest.raises(ValueError, match="config.init.format='onnx'"):
    weights.load_backbone(directory, 'onnx', model)


def test_an_npz_state_dict_over_the_absolute_cap_is_refused_before_it_is_read(tmp_path, monkeypatch):
  path = str(tmp_path / 'w.npz')
  np.savez_compressed(path, **{'fc.weight': np.zeros((100, 100), np.float32)})  # 40,000 bytes, deflated to ~100
  monkeypatch.setattr(weights, 'MAX_STATE_DICT_BYTES', 39_999)
  with pytest.raises(ValueError, match=r'w.npz .*40,000 bytes .* more than the 39,999'):
    weights.read_state_dict(path)
  monkeypatch.setattr(weights, 'MAX_STATE_DICT_BYTES', 40_000)
  assert weights.read_state_dict(path)['fc.weight'].shape == (100, 100)
