"""The engine: one child process per loaded model, each running a continuous-batching loop.

`client` is the daemon's side (spawn, talk, restart); `worker` is the child's main;
`scheduler` builds and runs each step, `admission` decides which waiting request joins the
batch and in which slots; `llama` is the only code that touches llama.cpp.
"""
