// vtk.js (under Cornerstone3D) pulls in xmlbuilder2, written for Node, for exporting scenes as XML: a code path
// this viewer never takes. These two stand in for the Node built-ins it names, so the browser bundle resolves.
export class EventEmitter {
  constructor() { this.listeners = new Map(); }
  on(name, listener) { this.listeners.set(name, [...(this.listeners.get(name) || []), listener]); return this; }
  emit(name, ...args) { (this.listeners.get(name) || []).forEach((listener) => listener(...args)); return true; }
}
export function domainToASCII(domain) { return new URL(`http://${domain}`).hostname; }
export function domainToUnicode(domain) { return domain; }
export default { EventEmitter, domainToASCII, domainToUnicode };
