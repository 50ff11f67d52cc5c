// Hash links between screens and the list of purposes (shared by the screens and app.js).

/** All purposes of a look at footage, in the order offered (src/api/export.rs `PURPOSES`). */
export const PURPOSES = ['incident', 'technical', 'subject-access', 'police', 'hand-over'];

/** Purposes that hand a copy to someone: recipient and reference are required. */
export const HAND_OVER = ['police', 'hand-over'];

/** Builds a hash link: `link('view', ['cam'], {from, to})` -> "#/view/cam?from=..&to=..". */
export function link(name, params = [], query) {
  let s = `#/${[name, ...params].map(encodeURIComponent).join('/')}`;
  if (query) {
    const q = new URLSearchParams();
    for (const [k, v] of Object.entries(query)) if (v !== undefined && v !== null && v !== '') q.set(k, v);
    const qs = q.toString();
    if (qs) s += `?${qs}`;
  }
  return s;
}
