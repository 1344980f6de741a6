"""Online predictions: the code shared by the API's predict route and the serving
process ``automl-serve`` (docs/serving.md).

- :mod:`api.serving.service`: one prediction, from raw request to answer;
- :mod:`api.serving.app`: ``automl-serve``, the predictions apart from the API;
- :mod:`api.serving.proxy`: the API forwarding predictions to it (``SERVING_URL``).
"""
