//! Topic patterns: `*` matches one segment, `**` any number of segments (zero or more); a lone `*`
//! or `**` matches every topic.

use std::fmt;

/// A compiled topic pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicPattern {
    source: String,
    segments: Vec<Segment>,
    all: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment {
    Literal(String),
    One,
    Any,
}

impl TopicPattern {
    /// Compiles a pattern, naming what is wrong with it.
    pub fn parse(pattern: &str) -> Result<TopicPattern, String> {
        if pattern.is_empty() {
            return Err("pattern must not be empty".into());
        }
        if pattern.len() > crate::event::MAX_TOPIC_LEN {
            return Err(format!("pattern is longer than {} bytes", crate::event::MAX_TOPIC_LEN));
        }
        let mut segments = Vec::new();
        for part in pattern.split('.') {
            let segment = match part {
                "*" => Segment::One,
                "**" => {
                    if segments.last() == Some(&Segment::Any) {
                        continue;
                    }
                    Segment::Any
                }
                "" => return Err(format!("pattern {pattern:?} has an empty segment")),
                literal => {
                    if let Some(bad) = literal
                        .chars()
                        .find(|c| !matches!(c, 'a'..='z' | '0'..='9' | '_' | '-'))
                    {
                        return Err(format!(
                            "pattern {pattern:?} contains {bad:?}; segments are [a-z0-9_-]+, * or **"
                        ));
                    }
                    Segment::Literal(literal.to_owned())
                }
            };
            segments.push(segment);
        }
        let all = pattern == "*" || pattern == "**";
        Ok(TopicPattern {
            source: pattern.to_owned(),
            segments,
            all,
        })
    }

    /// The pattern as written.
    pub fn as_str(&self) -> &str {
        &self.source
    }

    /// Whether this pattern matches every topic.
    pub fn matches_everything(&self) -> bool {
        self.all
    }

    /// Whether the pattern names `namespace` as its first segment literally.
    pub fn names_namespace(&self, namespace: &str) -> bool {
        matches!(self.segments.first(), Some(Segment::Literal(first)) if first == namespace)
    }

    /// Whether `topic` matches.
    pub fn matches(&self, topic: &str) -> bool {
        if self.all {
            return true;
        }
        let parts: Vec<&str> = topic.split('.').collect();
        match_from(&self.segments, &parts)
    }
}

/// Iterative glob matching with one backtrack point per `**`, linear in practice.
fn match_from(pattern: &[Segment], topic: &[&str]) -> bool {
    let (mut p, mut t) = (0usize, 0usize);
    let mut star: Option<(usize, usize)> = None;
    while t < topic.len() {
        match pattern.get(p) {
            Some(Segment::Any) => {
                star = Some((p, t));
                p += 1;
                continue;
            }
            Some(Segment::One) => {
                p += 1;
                t += 1;
                continue;
            }
            Some(Segment::Literal(literal)) if literal == topic[t] => {
                p += 1;
                t += 1;
                continue;
            }
            _ => {}
        }
        match star {
            Some((star_p, star_t)) => {
                p = star_p + 1;
                t = star_t + 1;
                star = Some((star_p, star_t + 1));
            }
            None => return false,
        }
    }
    pattern[p..].iter().all(|s| *s == Segment::Any)
}

impl fmt::Display for TopicPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.source)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(p: &str, t: &str) -> bool {
        TopicPattern::parse(p).unwrap().matches(t)
    }

    #[test]
    fn table() {
        let cases = [
            ("fs.created", "fs.created", true),
            ("fs.created", "fs.deleted", false),
            ("fs.*", "fs.created", true),
            ("fs.*", "fs", false),
            ("fs.*", "fs.a.b", false),
            ("fs.**", "fs", true),
            ("fs.**", "fs.a.b.c", true),
            ("fs.**", "fsx.a", false),
            ("**.created", "fs.created", true),
            ("**.created", "created", true),
            ("**.created", "fs.x.created", true),
            ("**.created", "fs.created.x", false),
            ("a.**.z", "a.z", true),
            ("a.**.z", "a.b.c.z", true),
            ("a.**.z", "a.b.c", false),
            ("a.*.**", "a", false),
            ("a.*.**", "a.b", true),
            ("*", "a.b.c", true),
            ("**", "anything.at.all", true),
            ("*.b", "a.b", true),
            ("**.**", "a", true),
            ("a.**.b.**.c", "a.x.b.y.z.c", true),
            ("a.**.b.**.c", "a.x.c.b", false),
        ];
        for (p, t, want) in cases {
            assert_eq!(m(p, t), want, "{p} vs {t}");
        }
    }

    #[test]
    fn rejects_bad_patterns() {
        for bad in ["", "a..b", "A", "a.*x", ".a", "a b"] {
            assert!(TopicPattern::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn names_namespace() {
        assert!(TopicPattern::parse("system.**").unwrap().names_namespace("system"));
        assert!(!TopicPattern::parse("**").unwrap().names_namespace("system"));
    }
}
