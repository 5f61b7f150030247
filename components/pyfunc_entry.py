"""MLflow "models from code" entry point of the generator's pyfunc (logged by ``mlflow_model``).

MLflow copies this file into the model and runs it at load time instead of unpickling a stored object,
so the artifact store holds no cloudpickle of the wrapper.
"""

import mlflow

from components.mlflow_model import GeneratorModel

mlflow.models.set_model(GeneratorModel())
