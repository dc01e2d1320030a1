// Worker threads do not inherit the TypeScript loader on Node 20: register it, then load the worker.
import { register } from 'tsx/esm/api';

register();
await import(new URL('./worker.ts', import.meta.url).href);
