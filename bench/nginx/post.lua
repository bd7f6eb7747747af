-- wrk script: a small non-streaming chat completion.
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.body = '{"model":"m","messages":[{"role":"user","content":"Say hello in one word."}],"max_tokens":1,"stream":false}'
wrk.path = "/v1/chat/completions"
