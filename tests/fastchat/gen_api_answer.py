"""FastChat's own `gen_api_answer.py` (fschat 0.2.36), run unchanged, for
crates/camelid/tests/fastchat_gen_api.rs.

Usage: gen_api_answer.py OPENAI_V0_DIR [gen_api_answer's arguments...]
It asks with the openai<1 client it was written for: OPENAI_V0_DIR holds openai 0.28 and
shortuuid (tests/fastchat/requirements-gen-api.txt, installed with `pip --target`; the test
venv keeps openai 1.x for the other tests). As in parity.py, only what FastChat's model loading
pulls in (torch, transformers, ...) and the Anthropic client are stubbed: gen_api_answer calls
neither for an OpenAI model. Run it in a folder with data/mt_bench/question.jsonl.
"""
import importlib.machinery
import runpy
import sys
import types


class _Stub(types.ModuleType):
    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)
        return _Stub(f"{self.__name__}.{name}")

    def __call__(self, *args, **kwargs):
        return _Stub("call")

    def __mro_entries__(self, bases):
        # A class deriving from a stubbed one (`nn.Module`) derives from object.
        return (object,)


class _StubFinder:
    ROOTS = ("torch", "transformers", "accelerate", "peft", "psutil", "anthropic", "huggingface_hub")

    def find_spec(self, name, path, target=None):
        if name.split(".")[0] in self.ROOTS:
            return importlib.machinery.ModuleSpec(name, self, is_package=True)
        return None

    def create_module(self, spec):
        return _Stub(spec.name)

    def exec_module(self, module):
        pass


sys.meta_path.insert(0, _StubFinder())
sys.path.insert(0, sys.argv[1])
sys.argv = ["gen_api_answer.py"] + sys.argv[2:]
runpy.run_module("fastchat.llm_judge.gen_api_answer", run_name="__main__")
