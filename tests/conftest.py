"""Options shared by the engine surface tests and the GPU kernel tests."""


def pytest_addoption(parser):
    parser.addoption("--engine", action="store", default=None, help="engine these tests must run against (vllm|sglang)")
    parser.addoption("--gpu-results", default=None, help="write per-case GPU results JSON here")
