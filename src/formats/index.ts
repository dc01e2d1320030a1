/** Every format qimg knows, registered with the block layer. */
import { registerFormat } from '../block/open.js';
import { openQed } from './qed/qed.js';
import { openRaw } from './raw/raw.js';

registerFormat('raw', openRaw);
registerFormat('qed', openQed);
