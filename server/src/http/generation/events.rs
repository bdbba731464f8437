//! The events of a request's engine streams, merged into one stream tagged with the stream's
//! position. Each stream yields its events up to and including its `Done` or `Error`, or a
//! final `None` if the engine closed it early, then ends; a stream is dropped (which aborts
//! it in the engine, a no-op once it is done) when it ends or when the merged stream is.

use crate::backend::RequestStream;
use crate::engine_api::EngineEvent;
use futures::stream::{self, BoxStream, SelectAll, StreamExt};

/// `(stream position, event)`; `None` means the engine closed the stream before `Done`.
pub type Tagged = (usize, Option<EngineEvent>);

pub fn merge(subs: Vec<Box<dyn RequestStream>>) -> SelectAll<BoxStream<'static, Tagged>> {
    stream::select_all(subs.into_iter().enumerate().map(|(i, s)| one(i, s)))
}

fn one(pos: usize, s: Box<dyn RequestStream>) -> BoxStream<'static, Tagged> {
    stream::unfold(Some(s), move |state| async move {
        let mut s = state?;
        let ev = s.recv().await;
        let last = matches!(ev, None | Some(EngineEvent::Done { .. }) | Some(EngineEvent::Error { .. }));
        Some(((pos, ev), if last { None } else { Some(s) }))
    })
    .boxed()
}
