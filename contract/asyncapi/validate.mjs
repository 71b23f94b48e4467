// Validates an AsyncAPI document with the official parser, Avro payloads included:
// node validate.mjs <path>. Exits 1 on any error-level diagnostic (warnings are printed).
import { Parser, fromFile } from '@asyncapi/parser';
import { AvroSchemaParser } from '@asyncapi/avro-schema-parser';

const path = process.argv[2];
if (!path) {
  console.error('usage: node validate.mjs <asyncapi.yaml>');
  process.exit(2);
}
const parser = new Parser();
parser.registerSchemaParser(AvroSchemaParser());
const { document, diagnostics } = await fromFile(parser, path).parse();
const errors = diagnostics.filter((d) => d.severity === 0);
for (const d of diagnostics) {
  const level = d.severity === 0 ? 'error' : 'warning';
  console.error(`${level}: ${d.code}: ${d.message} at ${JSON.stringify(d.path)}`);
}
if (!document || errors.length > 0) {
  console.error(`${path}: invalid (${errors.length} errors)`);
  process.exit(1);
}
const channels = document.channels().all().map((c) => c.address());
const messages = document.allMessages().all().length;
console.log(`${path}: valid AsyncAPI ${document.version()}: ${channels.length} channels, ${messages} messages`);
