"""Two-stage Super-Sub inference, compiled: the generalist picks a superclass, that superclass's specialist the
subclass.

* ``unpack``: one specialist unpacked from the bank inside the compiled function, whole or layer by layer;
* ``route``: images grouped by specialist on device (a loop, or one padded call), and the specialists' local
  distributions;
* ``two_stage``: ``predict(state, images, rule)``, the one prediction function, under a ``decide.Rule``: the
  shared trunk once, the router, then the rule's routes.
"""

from supersub_jax.inference import route
from supersub_jax.inference import two_stage
from supersub_jax.inference import unpack
from supersub_jax.inference.two_stage import DEFAULT_CHUNK_SIZES
from supersub_jax.inference.two_stage import path_settings
from supersub_jax.inference.two_stage import predict
from supersub_jax.inference.two_stage import trunk
from supersub_jax.inference.route import ROUTING_BY_PLATFORM
from supersub_jax.inference.route import ROUTINGS
from supersub_jax.inference.unpack import MATERIALIZE
from supersub_jax.inference.unpack import MATERIALIZE_BY_PLATFORM
from supersub_jax.inference.unpack import largest_dense_leaf_bytes
from supersub_jax.inference.unpack import specialist_variables

__all__ = ['DEFAULT_CHUNK_SIZES', 'MATERIALIZE', 'MATERIALIZE_BY_PLATFORM', 'ROUTINGS', 'ROUTING_BY_PLATFORM',
           'largest_dense_leaf_bytes', 'path_settings', 'predict', 'route', 'specialist_variables', 'trunk',
           'two_stage', 'unpack']
