"""The one FunctionApp: Azure and the local host (`salespredict serve`) both serve this object."""

import azure.functions as func

from functions.capture import bp as capture
from functions.etl_timer import bp as etl_timer
from functions.predict import bp as predict
from functions.system import bp as system

app = func.FunctionApp(http_auth_level=func.AuthLevel.FUNCTION)
app.register_functions(capture)
app.register_functions(etl_timer)
app.register_functions(predict)
app.register_functions(system)
