'use strict'

// The OpenFaaS node20 contract: event { body, headers, method, query, path },
// context { status(), headers(), succeed(), fail() }.
module.exports = async (event, context) => {
  const name = (typeof event.body === 'string' && event.body.trim()) || event.query.name || 'world'
  return context
    .status(200)
    .headers({ 'Content-Type': 'application/json' })
    .succeed({ message: `Hello, ${name}!` })
}
