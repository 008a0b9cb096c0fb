"""supersub_jax.measure: the one timing loop, compiled memory, and the held-out batches timed on."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import make_tiny_config
from supersub_jax import measure
from supersub_jax import setup_of
from supersub_jax import stages


def test_time_calls_takes_turns_by_whole_turns_after_the_warmup_and_times_every_call():
  order = []
  fns = {name: (lambda i, name=name: order.append((name, i))) for name in ('a', 'b')}
  timing = measure.time_calls(fns, 5, turn=2, warmup=2)
  # Warm-up: each function twice on input 0; then turns of two calls, the last turn cut short.
  assert order == [('a', 0), ('a', 0), ('b', 0), ('b', 0),
                   ('a', 0), ('a', 1), ('b', 0), ('b', 1), ('a', 2), ('a', 3), ('b', 2), ('b', 3), ('a', 4),
                   ('b', 4)]
  for t in timing.values():
    assert t.seconds.shape == (5,) and (t.seconds > 0).all() and t.first_s > 0
    assert t.mean == pytest.approx(t.seconds.mean()) and t.median == pytest.approx(np.median(t.seconds))
  with pytest.raises(ValueError, match='calls=0'):
    measure.time_calls(fns, 0)


def test_time_calls_waits_for_asynchronous_results():
  waited = []

  class Pending:  # what jax.block_until_ready sees: a pytree leaf with block_until_ready
    def block_until_ready(self):
      waited.append(1)
      return self

  measure.time_calls({'f': lambda i: Pending()}, 3)
  assert len(waited) == 4  # the compiling call and the three timed ones


def test_compiled_bytes_counts_arguments_outputs_and_temporaries():
  x = jax.ShapeDtypeStruct((256, 64), jnp.float32)
  got = measure.compiled_bytes(jax.jit(lambda a: (a @ a.T).sum(0)), x)
  assert got['argument'] == 256 * 64 * 4 and got['output'] == 256 * 4
  assert got['total'] == got['argument'] + got['output'] + got['temp'] - got['alias']


def test_held_out_batches_are_distinct_and_shuffled(tiny_data_dir):
  config = make_tiny_config(tiny_data_dir)
  hierarchy = setup_of.make_hierarchy(config)
  batches = measure.held_out_batches(config, hierarchy, 4, 3)
  assert len(batches) == 3 and all(b.shape == (4, 16, 16, 3) for b in batches)
  assert not np.array_equal(batches[0], batches[1])
  in_order = stages.eval_batches(config, stages.load_source(config, config.eval_split, hierarchy),
                                 label_mode='subclass', batch_size=4, process_index=0, process_count=1,
                                 local_device_count=1)
  first = np.asarray(next(iter(in_order))['image']).reshape(batches[0].shape)
  assert not np.array_equal(first, batches[0])  # not the split's stored order
