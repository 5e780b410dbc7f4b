"""Model definitions, each registered by name into `bench.models.MODELS` (installed as `bench_models`).

To add a model: write `def my_net(num_classes, in_shape, **cfg) -> nn.Module` in a new file here and decorate it
with `@MODELS.register("my_net", config=MyNetConfig)`. Every module of this package is imported when the model
registry is first read, so no other file needs an edit.
"""
