//! Many short texts (value names, renames) in one `String`, each found by a [`Span`].
//!
//! A model of many small tensors has hundreds of thousands of names; an allocation each, with its
//! pointer and length beside it, took several times the text itself (issue 18). A span is two
//! `u32`s.

/// Where one text lies in a [`TextBuffer`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Span {
    start: u32,
    len: u32,
}

#[derive(Debug, Default)]
pub struct TextBuffer {
    text: String,
}

impl TextBuffer {
    /// Appends `text`; `None` once the buffer would pass 4 GiB.
    pub fn push(&mut self, text: &str) -> Option<Span> {
        let start = u32::try_from(self.text.len()).ok()?;
        let len = u32::try_from(text.len()).ok()?;
        start.checked_add(len)?;
        self.text.push_str(text);
        Some(Span { start, len })
    }

    /// The text at `span`, a span this buffer handed out.
    pub fn get(&self, span: Span) -> &str {
        // Spans are made by `push` from whole `&str`s: in range, on char boundaries.
        &self.text[span.start as usize..(span.start + span.len) as usize]
    }

    pub fn shrink_to_fit(&mut self) {
        self.text.shrink_to_fit();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gives_back_each_text_pushed() {
        let mut buffer = TextBuffer::default();
        let texts = ["w", "", "naïve", "w_sparsified"];
        let spans: Vec<_> = texts.iter().map(|t| buffer.push(t).unwrap()).collect();
        for (span, text) in spans.iter().zip(texts) {
            assert_eq!(buffer.get(*span), text);
        }
        // The empty span names the empty text (an op with neither name nor outputs).
        assert_eq!(buffer.get(Span::default()), "");
    }
}
