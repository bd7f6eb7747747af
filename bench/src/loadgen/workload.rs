//! What the harness sends: OpenAI chat or completion bodies with prompt lengths drawn
//! from a distribution, sessions that share a system prompt and grow turn by turn, or
//! the lines of a JSONL workload file.

use serde_json::{json, Value};

/// A request to send: the path and the JSON body.
#[derive(Clone, Debug)]
pub struct Request {
    pub path: String,
    pub body: Vec<u8>,
}

/// A small deterministic generator (xorshift64*), so runs can be repeated.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform in [0, 1).
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Exponential with the given mean (Poisson arrivals).
    pub fn exp(&mut self, mean: f64) -> f64 {
        -mean * (1.0 - self.unit()).ln()
    }
}

/// Prompt length in words: `N` (fixed) or `MIN-MAX` (uniform).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Lengths {
    pub min: usize,
    pub max: usize,
}

impl std::str::FromStr for Lengths {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let parse = |t: &str| {
            t.trim()
                .parse::<usize>()
                .map_err(|_| format!("bad length {s:?}"))
        };
        match s.split_once('-') {
            Some((a, b)) => {
                let (min, max) = (parse(a)?, parse(b)?);
                if min > max {
                    return Err(format!("bad range {s:?}"));
                }
                Ok(Lengths { min, max })
            }
            None => {
                let n = parse(s)?;
                Ok(Lengths { min: n, max: n })
            }
        }
    }
}

impl Lengths {
    fn draw(&self, rng: &mut Rng) -> usize {
        self.min + (rng.next_u64() % (self.max - self.min + 1) as u64) as usize
    }
}

/// How bodies are made.
pub struct Workload {
    pub chat: bool,
    pub stream: bool,
    pub max_tokens: u32,
    pub model: String,
    pub prompt: Lengths,
    /// With sessions: each request continues one of them (shared system prompt of
    /// `system_words`, one more turn each time, reset after `turns`).
    pub sessions: Vec<Vec<Value>>,
    pub turns: usize,
    pub system_words: usize,
    /// Lines of a JSONL file, replayed in order (cycled).
    pub file: Vec<Request>,
    next_file: usize,
}

const WORDS: [&str; 8] = [
    "alpha", "beta", "gamma", "delta", "router", "token", "cache", "prefix",
];

fn words(n: usize, rng: &mut Rng) -> String {
    let mut s = String::with_capacity(n * 6);
    for i in 0..n {
        if i > 0 {
            s.push(' ');
        }
        s.push_str(WORDS[(rng.next_u64() % WORDS.len() as u64) as usize]);
    }
    s
}

impl Workload {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        chat: bool,
        stream: bool,
        max_tokens: u32,
        model: String,
        prompt: Lengths,
        sessions: usize,
        turns: usize,
        system_words: usize,
    ) -> Workload {
        Workload {
            chat,
            stream,
            max_tokens,
            model,
            prompt,
            sessions: vec![Vec::new(); sessions],
            turns: turns.max(1),
            system_words,
            file: Vec::new(),
            next_file: 0,
        }
    }

    /// Reads a JSONL workload: each line `{"path": "/v1/...", "body": {...}}` or just a
    /// body (sent to `/v1/chat/completions` when it has `messages`, else
    /// `/v1/completions`).
    pub fn load_file(&mut self, text: &str) -> Result<(), String> {
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() {
                continue;
            }
            let v: Value =
                serde_json::from_str(line).map_err(|e| format!("line {}: {e}", n + 1))?;
            let (path, body) = match (v.get("path").and_then(Value::as_str), v.get("body")) {
                (Some(p), Some(b)) => (p.to_string(), b.clone()),
                _ => {
                    let path = if v.get("messages").is_some() {
                        "/v1/chat/completions"
                    } else {
                        "/v1/completions"
                    };
                    (path.to_string(), v)
                }
            };
            self.file.push(Request {
                path,
                body: body.to_string().into_bytes(),
            });
        }
        if self.file.is_empty() {
            return Err("the workload file has no requests".into());
        }
        Ok(())
    }

    pub fn next(&mut self, rng: &mut Rng) -> Request {
        if !self.file.is_empty() {
            let r = self.file[self.next_file % self.file.len()].clone();
            self.next_file += 1;
            return r;
        }
        let user = words(self.prompt.draw(rng), rng);
        let body = if self.chat {
            let messages = if self.sessions.is_empty() {
                vec![json!({"role": "user", "content": user})]
            } else {
                let i = (rng.next_u64() % self.sessions.len() as u64) as usize;
                let s = &mut self.sessions[i];
                if s.len() >= 2 * self.turns || s.is_empty() {
                    s.clear();
                    // The shared system prompt: the same words for every session.
                    let mut fixed = Rng::new(42);
                    s.push(
                        json!({"role": "system", "content": words(self.system_words, &mut fixed)}),
                    );
                } else {
                    s.push(json!({"role": "assistant", "content": "ok"}));
                }
                s.push(json!({"role": "user", "content": user}));
                s.clone()
            };
            json!({"model": self.model, "messages": messages, "max_tokens": self.max_tokens, "stream": self.stream})
        } else {
            json!({"model": self.model, "prompt": user, "max_tokens": self.max_tokens, "stream": self.stream})
        };
        Request {
            path: if self.chat {
                "/v1/chat/completions"
            } else {
                "/v1/completions"
            }
            .to_string(),
            body: body.to_string().into_bytes(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lengths_and_sessions() {
        assert_eq!("5".parse::<Lengths>().unwrap(), Lengths { min: 5, max: 5 });
        assert_eq!(
            "2-9".parse::<Lengths>().unwrap(),
            Lengths { min: 2, max: 9 }
        );
        assert!("9-2".parse::<Lengths>().is_err());
        let mut w = Workload::new(true, true, 4, "m".into(), "3".parse().unwrap(), 1, 2, 10);
        let mut rng = Rng::new(1);
        let bodies: Vec<Value> = (0..3)
            .map(|_| serde_json::from_slice(&w.next(&mut rng).body).unwrap())
            .collect();
        // Turn 1: system + user; turn 2 grows; turn 3 starts the session over.
        assert_eq!(bodies[0]["messages"].as_array().unwrap().len(), 2);
        assert_eq!(bodies[1]["messages"].as_array().unwrap().len(), 4);
        assert_eq!(bodies[2]["messages"].as_array().unwrap().len(), 2);
        assert_eq!(
            bodies[0]["messages"][0], bodies[2]["messages"][0],
            "shared system prompt"
        );
    }

    #[test]
    fn jsonl_file() {
        let mut w = Workload::new(false, false, 1, "m".into(), "1".parse().unwrap(), 0, 1, 0);
        w.load_file("{\"prompt\": \"a\"}\n\n{\"path\": \"/v1/chat/completions\", \"body\": {\"messages\": []}}\n")
            .unwrap();
        let mut rng = Rng::new(1);
        assert_eq!(w.next(&mut rng).path, "/v1/completions");
        assert_eq!(w.next(&mut rng).path, "/v1/chat/completions");
        assert_eq!(w.next(&mut rng).path, "/v1/completions", "cycles");
    }
}
