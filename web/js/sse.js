// A small Server-Sent Events parser for streams read with fetch (EventSource cannot POST).

/**
 * Returns `feed(text)`: give it the stream's text as it arrives, in any pieces; it calls
 * `onEvent(event, data)` for each complete event (event defaults to "message"; several
 * `data:` lines are joined with newlines).
 */
export function parseSse(onEvent) {
  let buffer = '';
  let event = '';
  let data = [];
  const line = (l) => {
    if (l === '') {
      if (data.length) onEvent(event || 'message', data.join('\n'));
      event = '';
      data = [];
      return;
    }
    if (l.startsWith(':')) return; // comment
    const colon = l.indexOf(':');
    const field = colon < 0 ? l : l.slice(0, colon);
    let value = colon < 0 ? '' : l.slice(colon + 1);
    if (value.startsWith(' ')) value = value.slice(1);
    if (field === 'event') event = value;
    else if (field === 'data') data.push(value);
  };
  return (text) => {
    buffer += text;
    let nl;
    while ((nl = buffer.indexOf('\n')) >= 0) {
      let l = buffer.slice(0, nl);
      buffer = buffer.slice(nl + 1);
      if (l.endsWith('\r')) l = l.slice(0, -1);
      line(l);
    }
  };
}
