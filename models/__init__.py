"""Model definitions, each registered by name into `bench.models.MODELS` (installed as `bench_models`).

To add a model: write `def my_net(num_classes, in_shape, **cfg) -> nn.Module` in a file here, decorate it with
`@MODELS.register("my_net", config=MyNetConfig)` and import the file below.
"""

from bench_models import mlp, resnet, simple_cnn  # noqa: F401
