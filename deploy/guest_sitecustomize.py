"""Written by deploy.device: RPC workers must re-enter QEMU (no binfmt_misc)."""
import os
import sys

if os.environ.get("MDL_TVM_DEVICE_PYTHON"):
    sys.executable = os.environ["MDL_TVM_DEVICE_PYTHON"]
if os.environ.get("MDL_TVM_PHONE_CPU"):  # the RPC phone: offer mdl.phone.info, count_call
    try:
        import mdl_phone

        mdl_phone.register()
    except Exception as err:  # noqa: BLE001 - a server must start even without them
        print(f"mdl_phone: {err}", file=sys.stderr)
